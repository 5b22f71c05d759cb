"""`dojo generate` resumes only with the settings an output was made with, and Ctrl-C keeps what was written.

No model runs here: `load_from_args` and `generate_batch` are replaced by fakes whose answer is the prompt in upper
case, so a resumed file can be compared line by line with one written in a single run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_dojo.data.chat_format import ChatFormat
from llm_dojo.infer import generate
from llm_dojo.infer.common import LoadedModel

PROMPTS = [{"prompt": f"question {i}"} for i in range(5)]


class FakeTokenizer:
    """Just enough of a tokenizer for `run`: the prompt is the last user message, its ids are its characters."""

    chat_template = "last user message"
    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return messages[-1]["content"]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def convert_ids_to_tokens(self, ids):
        return [f"<stop-{i}>" for i in ids]


def fake_batch(model, tokenizer, prompts, config, stop_ids):
    return ["".join(map(chr, prompt)).upper() for prompt in prompts]


def fake_load(args):
    chat_format = ChatFormat(name="chatml", chat_template="", terminator="<|im_end|>", stop_tokens=("<|im_end|>",))
    return LoadedModel(object(), FakeTokenizer(), chat_format, [2], args.model or "base-of-adapter", False)


def must_not_load(args):
    raise AssertionError("the model was loaded although the settings differ")


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Input and output paths, with the model loading and generation replaced by fakes."""
    monkeypatch.setattr(generate, "load_from_args", fake_load)
    monkeypatch.setattr(generate, "generate_batch", fake_batch)
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return source, tmp_path / "answers.jsonl"


def argv(source: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", "smollm2-135m-instruct", "--input", str(source), "--output", str(output),
            "--batch-size", "2", "--max-new-tokens", "16", *extra]


def read_answers(output: Path) -> list[str]:
    return [json.loads(line)["answer"] for line in output.read_text().splitlines()]


EXPECTED = [p["prompt"].upper() for p in PROMPTS]


def interrupted_run(source: Path, output: Path, monkeypatch, *extra: str) -> int:
    """A run stopped by Ctrl-C during its second batch; returns the exit code."""
    calls = []

    def batch_then_interrupt(*batch_args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_batch(*batch_args)

    monkeypatch.setattr(generate, "generate_batch", batch_then_interrupt)
    code = generate.main(argv(source, output, *extra))
    monkeypatch.setattr(generate, "generate_batch", fake_batch)
    return code


def test_settings_are_recorded_beside_the_output(files, tmp_path):
    source, output = files
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert generate.main(argv(source, output, "--adapter", str(adapter), "--system", "Be brief.",
                              "--temperature", "0.7", "--top-p", "0.9")) == 0
    assert read_answers(output) == EXPECTED
    meta = json.loads((tmp_path / "answers.jsonl.meta.json").read_text())
    assert meta == {"model": "smollm2-135m-instruct", "model_as_given": "smollm2-135m-instruct",
                    "adapter": str(adapter.resolve()), "dtype": meta["dtype"], "load_in_4bit": False,
                    "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 16, "system": "Be brief.",
                    "model_path": "smollm2-135m-instruct", "chat_format": "chatml", "stop_tokens": ["<stop-2>"]}
    assert meta["dtype"] in ("float32", "bfloat16")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("first, second, made_with, asks_for", [
    ([], ["--temperature", "0.7"], "temperature 0.0", "temperature 0.7"),
    (["--adapter", "{a}"], ["--adapter", "{b}"], "adapter {a}", "adapter {b}"),
    ([], ["--model", "other-org/other-model"], "model smollm2-135m-instruct", "model other-org/other-model"),
    (["--temperature", "0.7"], ["--temperature", "0.7", "--top-p", "0.5"], "top_p 1.0", "top_p 0.5"),
    ([], ["--max-new-tokens", "32"], "max_new_tokens 16", "max_new_tokens 32"),
    ([], ["--system", "Be brief.", "--load-in-4bit"], 'load_in_4bit False and system prompt none',
     'load_in_4bit True and system prompt "Be brief."'),
])
def test_resume_with_other_settings_is_refused_before_loading_the_model(
        files, tmp_path, monkeypatch, capsys, first, second, made_with, asks_for):
    source, output = files
    a, b = tmp_path / "adapter-a", tmp_path / "adapter-b"
    a.mkdir(), b.mkdir()
    fill = {"a": a.resolve(), "b": b.resolve()}
    first, second = [arg.format(**fill) for arg in first], [arg.format(**fill) for arg in second]
    assert interrupted_run(source, output, monkeypatch, *first) == 130
    before = output.read_bytes()
    capsys.readouterr()

    monkeypatch.setattr(generate, "load_from_args", must_not_load)
    assert generate.main(argv(source, output, *second)) == 2
    error = capsys.readouterr().err
    assert error == (f"dojo generate: error: {output} was made with {made_with.format(**fill)}; this run asks for "
                     f"{asks_for.format(**fill)}. Use another --output, or delete {output} and {output}.meta.json "
                     f"to start over\n")
    assert output.read_bytes() == before


def test_a_finished_output_is_not_reported_done_for_other_settings(files, monkeypatch, capsys):
    source, output = files
    assert generate.main(argv(source, output)) == 0
    monkeypatch.setattr(generate, "load_from_args", must_not_load)
    assert generate.main(argv(source, output, "--temperature", "0.7")) == 2
    assert "was made with temperature 0.0" in capsys.readouterr().err


def test_equivalent_spellings_of_the_same_settings_resume(files, monkeypatch):
    source, output = files
    assert interrupted_run(source, output, monkeypatch, "--top-p", "0.9") == 130
    # greedy decoding ignores top_p; "SmolLM2-135M-Instruct" is the same embedded model
    again = argv(source, output, "--top-p", "0.5")
    again[1] = "SmolLM2-135M-Instruct"
    assert generate.main(again) == 0
    assert read_answers(output) == EXPECTED


def test_a_changed_chat_format_is_refused_once_the_tokenizer_is_known(files, monkeypatch, capsys):
    source, output = files
    assert interrupted_run(source, output, monkeypatch) == 130
    meta_file = Path(f"{output}.meta.json")
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "stop_tokens": ["<|endoftext|>"]}))
    assert generate.main(argv(source, output)) == 2
    error = capsys.readouterr().err
    assert "was made with stop tokens ['<|endoftext|>']; this run asks for stop tokens ['<stop-2>']" in error
    assert len(read_answers(output)) == 2


def test_an_output_without_settings_resumes_with_a_warning_and_records_them(files, caplog):
    source, output = files
    output.write_text(json.dumps({**PROMPTS[0], "answer": "SENTINEL"}) + "\n")
    assert generate.main(argv(source, output)) == 0
    assert read_answers(output) == ["SENTINEL"] + EXPECTED[1:]
    assert any("no answers.jsonl.meta.json" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert json.loads(Path(f"{output}.meta.json").read_text())["temperature"] == 0.0


def test_ctrl_c_keeps_finished_batches_and_the_same_command_completes_the_file(files, monkeypatch, capsys):
    source, output = files
    assert interrupted_run(source, output, monkeypatch) == 130
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == ("dojo generate: interrupted after 2 of 5 answers; "
                                      "rerun the same command to resume")
    assert "Traceback" not in error
    assert read_answers(output) == EXPECTED[:2]

    assert generate.main(argv(source, output)) == 0
    assert read_answers(output) == EXPECTED
    assert [json.loads(line)["prompt"] for line in output.read_text().splitlines()] == [p["prompt"] for p in PROMPTS]


def test_ctrl_c_while_loading_the_model_counts_the_answers_already_there(files, monkeypatch, capsys):
    source, output = files
    assert interrupted_run(source, output, monkeypatch) == 130

    def interrupted_load(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "load_from_args", interrupted_load)
    assert generate.main(argv(source, output)) == 130
    assert "interrupted after 2 of 5 answers" in capsys.readouterr().err
