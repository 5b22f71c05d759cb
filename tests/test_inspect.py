"""`dojo inspect`: trained tokens highlighted, machine-readable JSON, dataset statistics."""

from __future__ import annotations

import json

from conftest import CHAT_RECORDS
from llm_dojo.data.encode import IGNORE_INDEX
from llm_dojo.data.preview import main as inspect_main


def test_inspect_json_gives_ids_tokens_labels_and_stats(write_jsonl, capsys):
    data = write_jsonl(CHAT_RECORDS + ['{"broken'])
    assert inspect_main([f"train_data_path={data}", "skip_invalid=true", "-n", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stats = report["stats"]
    assert stats["records"] == 5 and stats["skipped_invalid"] == 1 and stats["samples"] == 4
    assert 0 < stats["trained_fraction"] < 1 and stats["template"] == "smollm2"
    sample = report["samples"][2]  # the multi-turn record with a system prompt
    assert len(sample["input_ids"]) == len(sample["tokens"]) == len(sample["labels"])
    assert sample["trained_text"] == "4<|im_end|>6<|im_end|>"
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(sample["input_ids"], sample["labels"]))


def test_inspect_highlights_trained_text_in_colour_and_without(write_jsonl, capsys):
    data = write_jsonl(CHAT_RECORDS[:1])
    assert inspect_main([f"train_data_path={data}", "--color", "always"]) == 0
    coloured = capsys.readouterr().out
    assert "\033[30;42mI am Dojo.<|im_end|>\033[0m" in coloured
    assert inspect_main([f"train_data_path={data}", "--color", "never"]) == 0
    plain = capsys.readouterr().out
    assert "[[I am Dojo.<|im_end|>]]" in plain and "\033[" not in plain
    assert "records: 1 read, 0 skipped" in plain


def test_inspect_bad_data_exits_2_with_location(write_jsonl, capsys):
    data = write_jsonl([{"instruction": "Hi"}])
    assert inspect_main([f"train_data_path={data}"]) == 2
    assert f"{data}:1: field 'output' is missing" in capsys.readouterr().err
