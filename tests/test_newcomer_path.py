"""The newcomer's path: every mistake gets one clear line in seconds, runs round-trip, numbers are right.

Each CLI case runs the real `dojo` command in a subprocess and asserts the exit code, that no traceback is printed,
and the message; the model-path and data-path mistakes must be reported in under 5 s, with no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_dojo.config import config_for_saving, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "train_args" / "demo_identity.yaml")


def dojo(*args: str, cwd: Path = ROOT, env: dict | None = None) -> tuple[int, str, float]:
    """Run `dojo ARGS` as a user would; returns (exit code, stderr, seconds)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "llm_dojo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("args, message", [
    (["model_name_or_path=./no-such-model"], "model_name_or_path './no-such-model': folder not found"),
    (["model_name_or_path=smollm2-135m"], "Did you mean: smollm2-135m-instruct?"),
    (["model_name_or_path=someorg/not-cached"], "huggingface.co cannot be reached"),
    (["train_data_path=data/nope.jsonl"], "train_data_path: data file 'data/nope.jsonl' not found"),
    (["output_dir=README.md"], "output_dir 'README.md' is a file"),
])
def test_path_mistakes_fail_in_seconds_with_one_line(args, message):
    code, err, seconds = dojo("train", DEMO, *args, env={"HF_HUB_OFFLINE": "0"})
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("dojo train: error: ") and message in err
    assert seconds < 5, f"took {seconds:.1f} s"


@pytest.mark.parametrize("args, message", [
    (["learning_rate=-1e-4"], "'learning_rate' must be positive, got -0.0001"),
    (["learning_rate=0"], "'learning_rate' must be positive, got 0.0"),
    (["num_train_epochs=0"], "'num_train_epochs' must be positive"),
    (["lora_rnak=8", "learnin_rate=1"], "unknown key 'lora_rnak' (did you mean 'lora_rank'?); command line: unknown "
                                        "key 'learnin_rate' (did you mean 'learning_rate'?)"),
])
def test_bad_values_are_refused_before_the_model_loads(args, message):
    code, err, _ = dojo("train", DEMO, *args)
    assert code == 2 and "Traceback" not in err and message in err


def test_a_negative_learning_rate_in_yaml_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"train_data_path: {ROOT / 'data' / 'demo_identity.jsonl'}\nlearning_rate: -1.0e-4\n")
    code, err, _ = dojo("train", str(config), f"output_dir={tmp_path / 'out'}")
    assert code == 2 and "'learning_rate' must be positive" in err and "Traceback" not in err


def test_an_existing_trained_output_is_not_overwritten_silently(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    code, err, _ = dojo("train", DEMO, f"output_dir={tmp_path}", "overwrite_output_dir=false")
    assert code == 2 and "already holds a trained output" in err and "overwrite_output_dir=true" in err


def test_data_paths_in_a_config_are_relative_to_the_config_file(tmp_path):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    (folder / "run.yaml").write_text("train_data_path: data/train.jsonl\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    previous = os.getcwd()
    os.chdir(elsewhere)
    try:
        config = load_config(str(folder / "run.yaml"), [])
    finally:
        os.chdir(previous)
    assert Path(config.data.train_data_path) == folder / "data" / "train.jsonl"


def test_the_saved_config_loads_again_and_reproduces_the_run(tmp_path):
    original = load_config(DEMO, ["lora_rank=8", "learning_rate=3e-4", "report_to=none"])
    saved = tmp_path / "dojo_config.yaml"
    from llm_dojo.recipes.outputs import plain

    saved.write_text(yaml.safe_dump(plain(config_for_saving(original)), sort_keys=False))
    reloaded = load_config(str(saved), [])
    assert config_for_saving(reloaded) == config_for_saving(original)


def test_unknown_command_suggests_the_closest():
    code, err, _ = dojo("trian")
    assert code == 2 and "Did you mean: train?" in err


def test_debug_shows_the_traceback():
    code, err, _ = dojo("--debug", "train", DEMO, "model_name_or_path=./no-such-model")
    assert code == 1 and "Traceback" in err and "folder not found" in err


@pytest.fixture
def tiny_run(tiny_model_dir, tmp_path, write_jsonl):
    """key=value arguments of a short `dojo train` on a tiny model: 4 records of equal length."""
    data = write_jsonl([{"instruction": f"Say {word}.", "output": f"{word}!"} for word in ("alpha", "bravo", "delta",
                                                                                           "gamma")])

    def args(**extra) -> list[str]:
        values = {"model_name_or_path": tiny_model_dir("llama"), "train_data_path": data,
                  "output_dir": str(tmp_path / "out"), "model_dtype": "fp32", "disable_tqdm": "true",
                  "per_device_train_batch_size": "1", **extra}
        return [f"{k}={v}" for k, v in values.items()]

    return args


def test_tokens_and_samples_per_second_count_what_was_trained(tiny_run, tmp_path):
    from llm_dojo.recipes.sft import main

    assert main(tiny_run(max_steps=2, max_len=40)) == 0  # rows of one sample (each ~35 tokens): 2 steps = 2 samples
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    from llm_dojo.models.loading import load_tokenizer

    assert summary["samples_trained"] == 2 and summary["real_tokens_per_s"] > 0
    one_sample = summary["real_tokens_trained"] / 2
    assert one_sample == int(one_sample) and 20 < one_sample <= 40
    final = [e for e in summary["log_history"] if "train_samples_per_second" in e][-1]
    assert final["train_samples_per_second"] == summary["samples_per_s"]
    assert load_tokenizer(str(tmp_path / "out")) is not None


def test_the_batch_size_counts_samples_also_when_they_are_packed(tiny_run, tmp_path, monkeypatch):
    from llm_dojo.recipes import trainer as dojo_trainer
    from llm_dojo.recipes.sft import main

    rows = []
    original = dojo_trainer.DojoTrainer.training_step

    def record_rows(self, model, inputs, *args, **kwargs):
        rows.append(inputs["input_ids"].shape[0])
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(dojo_trainer.DojoTrainer, "training_step", record_rows)
    assert main(tiny_run(max_steps=1, max_len=512, per_device_train_batch_size=4)) == 0
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["samples_trained"] == 4 and summary["steps"] == 1
    assert rows == [1]  # the four samples of the batch were packed into one row


def test_ctrl_c_saves_what_was_trained_and_exits_130(tiny_run, tmp_path, monkeypatch, capsys):
    from llm_dojo.recipes import sft
    from llm_dojo.recipes.trainer import DojoTrainer

    original = DojoTrainer.training_step

    def interrupted_at_step_2(self, *args, **kwargs):
        if self.state.global_step == 1:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DojoTrainer, "training_step", interrupted_at_step_2)
    assert sft.main(tiny_run(max_steps=5, max_len=40)) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 1 of 5" in err and "saved in" in err
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["interrupted"] is True and summary["steps"] == 1
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert "Training was interrupted" in (tmp_path / "out" / "README.md").read_text()


def test_held_out_loss_is_printed_plotted_and_carded(tiny_run, tmp_path, capsys, write_jsonl):
    from llm_dojo.recipes.sft import main

    held_out = write_jsonl([{"instruction": "Say echo.", "output": "echo!"}], name="heldout.jsonl")
    assert main(tiny_run(max_steps=1, eval_data_path=held_out)) == 0
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert f"held-out loss {summary['eval_loss']:.4f}" in capsys.readouterr().err
    assert summary["log_history"][-1]["eval_loss"] == summary["eval_loss"]  # what training_loss.png plots
    card = (tmp_path / "out" / "README.md").read_text()
    assert "More Information Needed" not in card and "by LoRA (r=16" in card
    assert f"| held-out loss | {summary['eval_loss']:.4f} |" in card


@pytest.mark.slow
def test_a_training_run_prints_no_warning_a_user_cannot_act_on(tmp_path):
    code, err, _ = dojo("train", DEMO, "max_steps=1", "max_samples=2", f"output_dir={tmp_path / 'out'}",
                        "disable_tqdm=true", env={"OMP_NUM_THREADS": "1"})
    assert code == 0, err
    noisy = [line for line in err.splitlines() if "warn" in line.lower()]
    assert noisy == []


@pytest.mark.parametrize("args, message", [
    (["chat", "--adapter", "/missing", "--prompt", "hi"], "--adapter /missing: no adapter_config.json there"),
    (["generate", "--adapter", "/missing", "--input", "{prompts}", "--output", "{answers}"],
     "/missing/adapter_config.json not found: --adapter must be a folder written by `dojo train`"),
    (["serve", "--adapter", "/missing", "--port", "0"], "--adapter /missing: no adapter_config.json there"),
    (["chat", "--model", "./no-such-model", "--prompt", "hi"], "--model './no-such-model': folder not found"),
])
def test_inference_commands_name_a_missing_adapter_or_model(args, message, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    args = [a.format(prompts=prompts, answers=tmp_path / "answers.jsonl") for a in args]
    code, err, _ = dojo(*args)
    assert code == 2 and "Traceback" not in err and message in err, err


def test_inspect_prints_no_library_warning():
    code, err, _ = dojo("inspect", DEMO, "-n", "0")
    assert code == 0 and [line for line in err.splitlines() if "WARN" in line.upper()] == []


def test_demo_data_and_questions_share_one_neutral_system_prompt():
    from llm_dojo import demo

    records = [json.loads(line) for line in (ROOT / "data" / "demo_identity.jsonl").read_text().splitlines()]
    systems = {r.get("system") or r["messages"][0]["content"] for r in records}
    assert systems == {demo.SYSTEM_PROMPT} and "SmolLM" not in demo.SYSTEM_PROMPT
