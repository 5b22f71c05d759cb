"""`dojo generate`: input checking, batched == one-by-one greedy output, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_dojo.infer import generate
from llm_dojo.infer.common import record_to_messages

RECORDS = [
    {"prompt": "What is the capital of France?", "id": 1},
    {"instruction": "Name the largest planet.", "input": ""},
    {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}]},
    {"prompt": "How many days are in a week?"},
    {"instruction": "Translate to French:", "input": "Good morning"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ input checking (no model)


def test_record_shapes_become_user_messages():
    assert record_to_messages({"prompt": "hi"}) == [{"role": "user", "content": "hi"}]
    assert record_to_messages({"instruction": "Sum:", "input": "1 2"}) == [{"role": "user", "content": "Sum:\n1 2"}]
    assert record_to_messages({"instruction": "Hi", "input": ""}) == [{"role": "user", "content": "Hi"}]
    messages = [{"role": "user", "content": "hi"}]
    assert record_to_messages({"messages": messages}) == messages


@pytest.mark.parametrize("line, field", [
    ('{"prompt": ', "not valid JSON"),
    ('{"question": "hi"}', "no 'prompt', 'instruction' or 'messages'"),
    ('{"prompt": 3}', "field 'prompt'"),
    ('{"instruction": "x", "input": 5}', "field 'input'"),
    ('{"messages": [{"role": "user"}]}', "field 'messages[0].content'"),
    ('{"messages": []}', "field 'messages'"),
    ('["a list"]', "expected a JSON object"),
    ('{"prompt": "hi", "answer": "x"}', "field 'answer'"),
])
def test_bad_input_line_names_file_line_and_field(tmp_path, capsys, line, field):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine"}, "", line])
    code = generate.main(["--model", "unused", "--input", str(path), "--output", str(tmp_path / "out.jsonl")])
    error = capsys.readouterr().err
    assert code == 2
    assert (f"{path}, line 3" in error or f"{path}:3" in error) and field in error


def test_output_of_another_input_is_refused(tmp_path):
    records = generate.read_records(write_jsonl(tmp_path / "in.jsonl", RECORDS))
    output = write_jsonl(tmp_path / "out.jsonl", [{"prompt": "something else", "answer": "x"}])
    with pytest.raises(ValueError, match="line 1 does not match"):
        generate.count_done(output, records)


def test_torn_last_line_is_dropped(tmp_path):
    records = generate.read_records(write_jsonl(tmp_path / "in.jsonl", RECORDS))
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({**RECORDS[0], "answer": "Paris"}) + "\n" + '{"prompt": "half')
    assert generate.count_done(output, records) == 1
    assert output.read_text().count("\n") == 1


# ------------------------------------------------------------------ with the embedded model


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from llm_dojo.models.loading import load_for_inference

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is much faster than two that wait on each other
    yield load_for_inference("smollm2-135m-instruct", dtype=torch.float32)
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_batched_greedy_equals_one_by_one(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    generate.run(model, tokenizer, source, batched, batch_size=len(RECORDS), max_new_tokens=8, system="Be brief.")
    generate.run(model, tokenizer, source, single, batch_size=1, max_new_tokens=8, system="Be brief.")
    batched_rows, single_rows = read_jsonl(batched), read_jsonl(single)
    assert [row["answer"] for row in batched_rows] == [row["answer"] for row in single_rows]
    # input fields are kept, in input order, and the special end-of-turn token never leaks into the text
    assert [{k: v for k, v in row.items() if k != "answer"} for row in batched_rows] == RECORDS
    assert "Paris" in batched_rows[0]["answer"]
    assert all(row["answer"] and "<|im_end|>" not in row["answer"] for row in batched_rows)


@pytest.mark.slow
def test_rerun_skips_lines_already_written(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS[:3])
    output = write_jsonl(tmp_path / "out.jsonl", [{**RECORDS[0], "answer": "SENTINEL-0"},
                                                  {**RECORDS[1], "answer": "SENTINEL-1"}])
    argv = ["--model", "smollm2-135m-instruct", "--dtype", "fp32", "--input", str(source), "--output", str(output),
            "--batch-size", "2", "--max-new-tokens", "4"]
    assert generate.main(argv) == 0
    rows = read_jsonl(output)
    assert [row["answer"] for row in rows[:2]] == ["SENTINEL-0", "SENTINEL-1"]
    # an output from before settings were recorded gets them now, from the real model's chat format
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert (meta["model"], meta["dtype"], meta["temperature"], meta["max_new_tokens"]) == (
        "smollm2-135m-instruct", "float32", 0.0, 4)
    assert (meta["chat_format"], meta["stop_tokens"]) == ("smollm2", ["<|im_end|>"])
    assert len(rows) == 3 and rows[2]["messages"] == RECORDS[2]["messages"] and rows[2]["answer"]
    assert generate.run(model, tokenizer, source, output, batch_size=2, max_new_tokens=4) == 0
    assert generate.main(argv) == 0
    assert read_jsonl(output) == rows
