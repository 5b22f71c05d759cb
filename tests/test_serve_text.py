"""How `dojo serve` turns generated tokens into text: stop strings, held-back text, token bytes (tokenizer only)."""

from __future__ import annotations

import pytest

from llm_dojo.serve.logprobs import TokenLogprob
from llm_dojo.serve.text import Detokenizer, RowText, token_text

TEXT = "The capital of France is Paris. 日本 is Japan, café."


def feed(tokenizer, text: str, stop=(), with_logprobs=False):
    """Feed `text`'s tokens to a RowText one by one: (the released pieces, the released tokens, whether it stopped)."""
    row, pieces, released = RowText(tokenizer, stop), [], []
    stopped = False
    for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
        stopped = row.add(token_id, TokenLogprob(str(token_id), [], -1.0, []) if with_logprobs else None)
        piece, tokens = row.release(final=stopped)
        pieces.append(piece)
        released += tokens
        if stopped:
            break
    if not stopped:
        piece, tokens = row.release(final=True)
        pieces.append(piece)
        released += tokens
    return pieces, released, stopped


def test_detokenizer_equals_decoding_everything_at_once(smol_tokenizer):
    ids = smol_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    detokenizer = Detokenizer(smol_tokenizer, skip_special_tokens=True)
    deltas = [detokenizer.add(i) for i in ids]
    assert "".join(deltas) == smol_tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in delta for delta in deltas)  # half of 日 waits for the rest


@pytest.mark.parametrize("stop, expected", [
    (["Paris"], "The capital of France is "),
    (["tal of Fr"], "The capi"),
    (["Japan", "本 i"], "The capital of France is Paris. 日"),
    (["."], "The capital of France is Paris"),
    (["nowhere"], TEXT),
    (["café!"], TEXT),  # a start of it appears at the very end: released when the row ends
])
def test_row_text_cuts_before_the_first_stop_string_and_never_sends_past_it(smol_tokenizer, stop, expected):
    pieces, _, stopped = feed(smol_tokenizer, TEXT, stop)
    assert "".join(pieces) == expected
    assert stopped == (expected != TEXT)
    sent = ""
    for piece in pieces:  # no released prefix ever runs into a stop string
        sent += piece
        assert not any(s in sent for s in stop)


def test_held_back_text_waits_while_it_could_start_a_stop_string(smol_tokenizer):
    pieces, _, _ = feed(smol_tokenizer, "The capital of France", ["capital city"])
    # "capital" could begin "capital city" and waits; with " of" it cannot any more and goes out
    assert pieces == ["The", " ", "capital of", " France", ""]


def test_tokens_that_start_before_the_cut_are_kept_with_their_offsets(smol_tokenizer):
    _, tokens, _ = feed(smol_tokenizer, TEXT, ["tal of Fr"], with_logprobs=True)
    ids = smol_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert [t.token for t in tokens] == [str(i) for i in ids[:2]]  # "The", " capital" (cut inside it); " of" dropped
    assert [t.offset for t in tokens] == [0, 3]


def test_token_bytes_are_exact_for_tokens_that_are_part_of_a_character(smol_tokenizer):
    ids = smol_tokenizer(" 日", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # the byte-level tokenizer splits the character
    raw = [byte for i in ids for byte in token_text(smol_tokenizer, i)[1]]
    assert bytes(raw) == " 日".encode()
    assert token_text(smol_tokenizer, smol_tokenizer.convert_tokens_to_ids("ĠFrance")) == (" France", list(b" France"))
