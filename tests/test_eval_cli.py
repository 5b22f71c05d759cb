"""`dojo eval` end to end on a tiny model: held-out loss equal to the trainer's, the report files, the last-line JSON,
--compare, eval_after_training, and clear errors before any model loads."""

from __future__ import annotations

import json

import pytest

from llm_dojo import cli
from llm_dojo.config import load_config
from llm_dojo.recipes.sft import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ["red", "green", "blue"]
TRAIN = [{"instruction": f"Name a colour, number {i}.", "output": f"Colour {i} is {COLOURS[i % 3]}."}
         for i in range(16)]
# Answers of very different lengths (a per-batch mean would differ from the per-token mean), one longer than
# max_len (so the saved max_len must be used), a multi-turn record, groups and keywords.
HELD_OUT = [
    {"instruction": "Name a colour, number 20.", "output": "Colour 20 is red.", "group": "colours",
     "keywords": COLOURS},
    {"instruction": "Name a colour, number 21.", "output": "Colour 21 is green, " + "a very bright green, " * 6 + ".",
     "group": "colours", "keywords": COLOURS},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
     "group": "general", "keywords": ["blue"]},
    {"instruction": "Say yes.", "output": "Yes.", "group": "general"},
    {"prompt": "Count to three.", "completion": "One, two, three."},
]
MAX_LEN = 48
# The relative tolerance of "equal": the trainer scores the held-out set on packed rows with per-sample attention,
# dojo eval on padded rows of a freshly loaded adapter; measured difference ~1e-7.
LOSS_RTOL = 1e-5


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A tiny llama LoRA run with held-out data, and eval_after_training on the same file."""
    folder = tmp_path_factory.mktemp("eval-run")
    train_file, eval_file = folder / "train.jsonl", folder / "heldout.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    model = tiny_model_dir("llama")
    output = folder / "run"
    summary = train(load_config(None, [
        f"model_name_or_path={model}", f"train_data_path={train_file}", f"eval_data_path={eval_file}",
        f"eval_after_training={eval_file}", f"output_dir={output}", "model_dtype=fp32", f"max_len={MAX_LEN}",
        "per_device_train_batch_size=4", "max_steps=4", "learning_rate=5e-3", "logging_steps=1", "disable_tqdm=true",
        "save_strategy=no", "lora_dropout=0.1"]))
    return {"model": model, "output": output, "eval_file": str(eval_file), "summary": summary}


def test_heldout_loss_equals_the_loss_the_trainer_logged(trained, capsys):
    assert cli.main(["eval", "--model", trained["model"], "--adapter", str(trained["output"]),
                     "--data", trained["eval_file"], "--metrics", "loss"]) == 0
    metrics = last_json(capsys.readouterr().out)
    logged = trained["summary"]["eval_loss"]
    assert metrics["loss"] == pytest.approx(logged, rel=LOSS_RTOL)
    assert metrics["perplexity"] == pytest.approx(2.718281828459045 ** logged, rel=1e-4)
    assert metrics["loss_samples"] == len(HELD_OUT)
    assert "contains" not in metrics  # --metrics loss: no generation


def test_eval_after_training_writes_eval_folder_and_summary(trained):
    output = trained["output"]
    in_summary = json.loads((output / "training_summary.json").read_text())["eval_after_training"]
    assert in_summary == trained["summary"]["eval_after_training"]
    assert in_summary["loss"] == pytest.approx(trained["summary"]["eval_loss"], rel=LOSS_RTOL)
    assert in_summary["answers"] == len(HELD_OUT)
    assert {"colours/contains", "general/contains", "rouge_l", "chrf", "exact_match"} <= set(in_summary)
    assert (output / "eval" / "report.md").is_file() and (output / "eval" / "metrics.png").is_file()


def test_eval_writes_report_metrics_chart_and_ends_with_one_json_line(trained, tmp_path, capsys):
    report = tmp_path / "report"
    assert cli.main(["eval", "--adapter", str(trained["output"]), "--data", trained["eval_file"], "--output",
                     str(report), "--max-new-tokens", "8", "--batch-size", "2"]) == 0
    metrics = last_json(capsys.readouterr().out)
    assert {"loss", "perplexity", "exact_match", "contains", "rouge_l", "chrf", "colours/contains",
            "general/chrf"} <= set(metrics)
    assert metrics["answers"] == len(HELD_OUT)
    saved = json.loads((report / "metrics.json").read_text())
    assert saved["metrics"] == metrics and saved["max_len"] == MAX_LEN  # read from the adapter's dojo_config.yaml
    rows = [json.loads(line) for line in (report / "answers.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows][:2] == [HELD_OUT[0]["output"], HELD_OUT[1]["output"]]
    assert sum(r["contains"] for r in rows) / len(rows) == pytest.approx(metrics["contains"])
    assert (report / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "| colours/contains |" in text and "## Answers" in text
    assert not [p for p in report.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_compare_puts_two_runs_side_by_side_with_differences(trained, tmp_path, capsys):
    base_run = tmp_path / "base"
    assert cli.main(["eval", "--model", trained["model"], "--data", trained["eval_file"], "--output", str(base_run),
                     "--max-new-tokens", "8", "--max-len", str(MAX_LEN)]) == 0
    base = last_json(capsys.readouterr().out)
    after_run = tmp_path / "after"
    assert cli.main(["eval", "--adapter", str(trained["output"]), "--data", trained["eval_file"], "--output",
                     str(after_run), "--max-new-tokens", "8", "--compare", str(base_run)]) == 0
    out = capsys.readouterr().out
    after = last_json(out)
    saved = json.loads((after_run / "metrics.json").read_text())["compare"]
    assert saved["metrics"] == base
    assert saved["difference"]["loss"] == pytest.approx(after["loss"] - base["loss"])
    assert after["loss"] < base["loss"]  # trained on this kind of data: the adapter must fit it better
    text = (after_run / "report.md").read_text()
    assert f"| loss | {base['loss']:.4f} | {after['loss']:.4f} | {after['loss'] - base['loss']:.4f} ✓ |" in text
    assert "## Forgetting check" in text and "general/contains" in text
    assert "difference" in out.splitlines()[0] or any("difference" in line for line in out.splitlines())

    # The same comparison in one call: the adapter's base is evaluated with the adapter switched off.
    assert cli.main(["eval", "--adapter", str(trained["output"]), "--data", trained["eval_file"],
                     "--max-new-tokens", "8", "--compare-model", trained["model"]]) == 0
    one_call = capsys.readouterr().out
    assert last_json(one_call)["loss"] == pytest.approx(after["loss"], rel=1e-6)
    loss_line = next(line for line in one_call.splitlines() if line.startswith("loss "))
    assert float(loss_line.split()[1]) == pytest.approx(base["loss"], abs=1e-4)


@pytest.mark.parametrize("record,message", [
    ({"instruction": "Hi", "output": "Hello", "keywords": []}, r"bad\.jsonl:2: field 'keywords'"),
    ({"instruction": "Hi", "output": "Hello", "group": "a/b"}, r"bad\.jsonl:2: field 'group'"),
    ({"instruction": "Hi"}, r"bad\.jsonl:2: .*output"),
    ('{"instruction": "Hi", ', r"bad\.jsonl:2: not valid JSON"),
])
def test_bad_records_are_refused_with_file_line_and_field(record, message, write_jsonl, capsys, monkeypatch):
    monkeypatch.setattr("llm_dojo.infer.common.load_from_args", lambda *a, **k: pytest.fail("model loaded"))
    path = write_jsonl([{"instruction": "Fine", "output": "Yes"}, record], name="bad.jsonl")
    assert cli.main(["eval", "--model", "smollm2-135m-instruct", "--data", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dojo eval: error: ")
    assert __import__("re").search(message, err), err


def test_wrong_arguments_fail_before_the_model_loads(write_jsonl, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("llm_dojo.infer.common.load_from_args", lambda *a, **k: pytest.fail("model loaded"))
    data = write_jsonl([{"instruction": "Hi", "output": "Hello"}])
    cases = [
        (["--data", data, "--metrics", "bleu"], "unknown metric 'bleu'"),
        (["--data", data, "--compare", str(tmp_path)], "no metrics.json there"),
        (["--tasks", str(tmp_path / "missing.yaml")], "missing.yaml not found"),
        (["--data", str(tmp_path / "nope.jsonl")], "nope.jsonl"),
    ]
    for extra, message in cases:
        assert cli.main(["eval", "--model", "smollm2-135m-instruct", *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: neither --data nor --tasks
        cli.main(["eval", "--model", "smollm2-135m-instruct"])


def test_scores_are_averaged_overall_and_within_each_group():
    from llm_dojo.eval.answers import score_answers
    from llm_dojo.eval.records import to_eval_record

    records = [to_eval_record({"instruction": q, "output": a, "group": g, "keywords": k}, f"x.jsonl:{i}")
               for i, (q, a, g, k) in enumerate([("Name?", "I am Dojo.", "identity", ["Dojo"]),
                                                 ("Who?", "I am Dojo.", "identity", ["Dojo"]),
                                                 ("Capital?", "Paris.", "general", None)], start=1)]
    means, rows = score_answers(records, ["My name is Dojo!", "I'm SmolLM.", "paris"])
    assert [r["contains"] for r in rows] == [1.0, 0.0, 1.0]
    assert means["identity/contains"] == 0.5 and means["general/contains"] == 1.0
    assert means["contains"] == pytest.approx(2 / 3)
    assert means["general/exact_match"] == 1.0 and means["identity/exact_match"] == 0.0
    assert means["answers"] == 3 and rows[0]["source"] == "x.jsonl:1" and rows[2]["reference"] == "Paris."
