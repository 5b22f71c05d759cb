"""Test helper: where in the rendered text the trained tokens lie, as character spans (from the tokenizer's offsets)."""

from __future__ import annotations

from llm_dojo.data.encode import IGNORE_INDEX


def trained_char_spans(tokenizer, text: str, sample) -> list[tuple[int, int]]:
    """Character spans [start, end) of `text` covered by runs of consecutive trained tokens of `sample`."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert list(encoding["input_ids"]) == sample.input_ids, "the sample must be exactly this text, tokenized once"
    spans: list[tuple[int, int]] = []
    previous_trained = False
    for token, label, (start, end) in zip(sample.input_ids, sample.labels, encoding["offset_mapping"]):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token, "a trained label must be the token itself (the shift happens in the loss)"
            if previous_trained:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        previous_trained = trained
    return spans
