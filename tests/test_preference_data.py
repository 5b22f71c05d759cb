"""Preference records: every accepted shape, clear errors, and exact masks for every template family."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import family_tokenizer
from llm_dojo.data.chat_format import resolve_chat_format
from llm_dojo.data.encode import IGNORE_INDEX
from llm_dojo.data.preference import (attach_kl_samples, encode_kto, encode_pair, encode_preference_set,
                                      load_preference_records, to_kto_example, to_preference_pair)
from llm_dojo.data.sources import DataError
from llm_dojo.templates import get_template, template_names
from test_encode_labels import assert_runs_are_answers, trained_runs

PROMPT = [{"role": "user", "content": "Name a colour."}]
CHOSEN, REJECTED = "Blue.", "I would rather not say which colour I like."


def trained_text(tokenizer, ids, labels) -> list[str]:
    return trained_runs(tokenizer, SimpleNamespace(input_ids=ids, labels=labels))


@pytest.mark.parametrize("record", [
    {"prompt": "Name a colour.", "chosen": CHOSEN, "rejected": REJECTED},
    {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": CHOSEN}],
     "rejected": {"role": "assistant", "content": REJECTED}},
    {"messages": PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
    {"instruction": "Name a colour.", "input": "", "chosen": CHOSEN, "rejected": REJECTED},
    {"chosen": PROMPT + [{"role": "assistant", "content": CHOSEN}],
     "rejected": PROMPT + [{"role": "assistant", "content": REJECTED}]},  # implicit prompt (HH style)
])
def test_every_paired_shape_gives_the_same_pair(record):
    pair = to_preference_pair(record, "p.jsonl:1")
    assert pair.prompt == PROMPT
    assert pair.chosen == {"role": "assistant", "content": CHOSEN}
    assert pair.rejected == {"role": "assistant", "content": REJECTED}


def test_multi_turn_prefix_and_alpaca_system_are_kept():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    assert to_preference_pair({"messages": turns, "chosen": CHOSEN, "rejected": REJECTED}, "p:1").prompt == turns
    alpaca = to_preference_pair({"system": "Be brief.", "instruction": "Name a colour.", "input": "Quickly.",
                                 "chosen": CHOSEN, "rejected": REJECTED}, "p:1")
    assert alpaca.prompt == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Name a colour.\nQuickly."}]


@pytest.mark.parametrize("record,message", [
    ({"prompt": "Q", "chosen": "A"}, r"p\.jsonl:7: field 'rejected' is missing"),
    ({"prompt": "Q", "completion": "A", "label": True}, "looks like a KTO record: use stage: kto"),
    ({"prompt": "Q", "chosen": 3, "rejected": "B"}, r"p\.jsonl:7: field 'chosen' must be a string"),
    ({"prompt": "Q", "chosen": "", "rejected": "B"}, "field 'chosen' is empty"),
    ({"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "B"}],
      "rejected": "B"}, "field 'chosen' must hold one assistant message"),
    ({"prompt": "Q", "chosen": {"role": "user", "content": "A"}, "rejected": "B"},
     "field 'chosen' must hold one assistant message"),
    ({"messages": PROMPT + [{"role": "assistant", "content": "A"}], "chosen": "A", "rejected": "B"},
     "a prompt must end with a user"),
    ({"prompt": "Q", "chosen": "Same", "rejected": "Same"}, "are the same answer"),
    ({"chosen": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A"}],
      "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}]},
     "differ before their last turn"),
    ({"chosen": "A", "rejected": "B"}, "no prompt"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_malformed_pairs_name_file_line_and_field(record, message):
    with pytest.raises(DataError, match=message) as error:
        to_preference_pair(record, "p.jsonl:7")
    assert str(error.value).startswith("p.jsonl:7: ")


@pytest.mark.parametrize("record,message", [
    ({"prompt": "Q", "completion": "A"}, "field 'label' is missing"),
    ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "use stage: dpo"),
    ({"prompt": "Q", "completion": "A", "label": "yes"}, "field 'label' must be true or false"),
    ({"prompt": "Q", "completion": "A", "label": 1}, "field 'label' must be true or false"),
])
def test_malformed_kto_records(record, message):
    with pytest.raises(DataError, match=message):
        to_kto_example(record, "k.jsonl:2")


def test_a_bad_line_in_a_file_is_named(write_jsonl):
    path = write_jsonl([{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": "A"}])
    with pytest.raises(DataError, match=r"data\.jsonl:2: field 'rejected' is missing"):
        load_preference_records(path, "dpo")
    pairs, report = load_preference_records(path, "dpo", skip_invalid=True)
    assert len(pairs) == 1 and report.skipped == 1


@pytest.mark.parametrize("name", template_names())
def test_pair_masks_train_exactly_each_answer_and_its_terminator(name, smol_tokenizer):
    """For every family: each side is the official rendering of prompt + answer, byte for byte; only the answer and
    its terminator are trained; the prompt tokens of both sides are identical; earlier assistant turns are not
    trained."""
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    chat_format = resolve_chat_format(tokenizer, name)
    system = [{"role": "system", "content": "Be brief."}] if spec.supports_system else []
    prompt = system + [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Name a colour."}]
    pair = to_preference_pair({"messages": prompt, "chosen": CHOSEN, "rejected": REJECTED}, "p:1")
    item = encode_pair(pair, tokenizer, chat_format, max_len=4096)
    for side, answer in (("chosen", CHOSEN), ("rejected", REJECTED)):
        ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
        assert_runs_are_answers(trained_text(tokenizer, ids, labels), [answer], spec.terminator)
        official = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        rendered = tokenizer.decode(ids)
        assert rendered == official or rendered == official + spec.terminator, (rendered, official)
        assert len(ids) == len(labels)
    first = [next(i for i, label in enumerate(item[f"{side}_labels"]) if label != IGNORE_INDEX)
             for side in ("chosen", "rejected")]
    assert first[0] == first[1]
    assert item["chosen_input_ids"][:first[0]] == item["rejected_input_ids"][:first[1]]


def test_pairs_longer_than_max_len_are_dropped_and_counted(smol_tokenizer):
    chat_format = resolve_chat_format(smol_tokenizer)
    pairs = [to_preference_pair({"prompt": "Q", "chosen": "A", "rejected": "B " * n}, f"p:{n}") for n in (1, 5, 200)]
    encoded, stats = encode_preference_set(pairs, smol_tokenizer, chat_format, max_len=64)
    assert len(encoded) == 2 and stats.too_long == 1 and stats.examples == 2
    assert stats.lengths == [len(encoded[0]["chosen_labels"]), len(encoded[0]["rejected_labels"]),
                             len(encoded[1]["chosen_labels"]), len(encoded[1]["rejected_labels"])]
    with pytest.raises(DataError, match="no preference example fits within max_len=8"):
        encode_preference_set(pairs, smol_tokenizer, chat_format, max_len=8)


def test_kto_examples_get_a_mismatched_kl_sample(smol_tokenizer):
    chat_format = resolve_chat_format(smol_tokenizer)
    examples = [to_kto_example({"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 2 == 0},
                               f"k:{i}") for i in range(5)]
    items = [encode_kto(e, smol_tokenizer, chat_format, 256) for e in examples]
    attach_kl_samples(items, seed=0, max_len=256)
    partners = set()
    for index, item in enumerate(items):
        text = smol_tokenizer.decode(item["kl_input_ids"])
        assert f"Question {index}?" in text and f"Answer {index}." not in text  # own prompt, another's answer
        answer = next(i for i in range(5) if f"Answer {i}." in text)
        partners.add(answer)
        # The KL sample is exactly what rendering that prompt with that answer gives.
        rendered = encode_kto(to_kto_example({"prompt": f"Question {index}?", "completion": f"Answer {answer}.",
                                              "label": True}, "k"), smol_tokenizer, chat_format, 256)
        assert item["kl_input_ids"] == rendered["input_ids"] and item["kl_labels"] == rendered["labels"]
    assert partners == set(range(5))  # every answer used once


def test_dojo_inspect_shows_a_pair_side_by_side(tmp_path, write_jsonl, capsys):
    from llm_dojo.data.preview import main

    path = write_jsonl([{"prompt": "Name a colour.", "chosen": CHOSEN, "rejected": REJECTED}])
    assert main([f"train_data_path={path}", "stage=dpo", "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert "<|im_start|>user\nName a colour.<|im_end|>" in shown  # the prompt, as rendered, once
    header = next(line for line in shown.splitlines() if line.startswith("chosen (trained"))
    assert "│ rejected (trained" in header
    assert "Blue.<|im_end|>" in shown and "I would rather not say" in shown
    assert "dpo: 1 pairs" in shown
    assert main([f"train_data_path={path}", "stage=dpo", "--json"]) == 0
    import json

    item = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["examples"][0]
    assert item["chosen_trained_text"] == "Blue.<|im_end|>"


def test_dojo_inspect_names_a_bad_pair(write_jsonl, capsys):
    from llm_dojo.data.preview import main

    path = write_jsonl([{"prompt": "Q", "chosen": "A"}], "bad.jsonl")
    assert main([f"train_data_path={path}", "stage=dpo"]) == 2
    assert "bad.jsonl:1: field 'rejected' is missing" in capsys.readouterr().err


@pytest.mark.parametrize("answer,one", [
    ("The capital of Peru is Lima.", True), ("It is 3.5 metres long.", True), ("Yes!", True),
    ("The capital is Lima. It is big.", False), ("The capital is Lima", False), ("", False),
    ("Lima. ", True), ("What? No.", False),
])
def test_the_demo_counts_one_sentence_answers(answer, one):
    from llm_dojo.demo_preference import is_one_sentence

    assert is_one_sentence(answer) is one
