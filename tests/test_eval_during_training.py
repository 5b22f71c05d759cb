"""Held-out evaluation while training: eval_loss on the training masks every eval_steps, the best checkpoint
tracked, early stopping when it stops improving, and clear errors when the settings cannot work."""

from __future__ import annotations

import json

import pytest

from llm_dojo.config import ConfigError, load_config
from llm_dojo.recipes.sft import train

RECORDS = [{"instruction": f"Name a colour, number {i}.", "output": f"Colour {i} is {['red', 'green', 'blue'][i % 3]}."}
           for i in range(24)]


def settings(model: str, data: str, output, *extra: str) -> list[str]:
    return [f"model_name_or_path={model}", f"train_data_path={data}", f"output_dir={output}", "model_dtype=fp32",
            "max_len=64", "per_device_train_batch_size=4", "logging_steps=1", "disable_tqdm=true",
            "val_set_size=0.25", "eval_strategy=steps", "eval_steps=2", "save_strategy=steps", "save_steps=2", *extra]


def test_eval_loss_is_logged_and_the_best_checkpoint_tracked(tiny_model_dir, write_jsonl, tmp_path):
    output = tmp_path / "run"
    summary = train(load_config(None, settings(tiny_model_dir("llama"), write_jsonl(RECORDS), output,
                                               "max_steps=6", "learning_rate=5e-3")))
    evals = [e for e in summary["log_history"] if "eval_loss" in e and "step" in e]
    assert [e["step"] for e in evals][:3] == [2, 4, 6]  # during training; the last entry is the final held-out loss
    best = min(e["eval_loss"] for e in evals[:3])
    assert summary["best_eval_loss"] == pytest.approx(best)
    step = next(e["step"] for e in evals if e["eval_loss"] == summary["best_eval_loss"])
    assert summary["best_checkpoint"].endswith(f"checkpoint-{step}")
    saved = json.loads((output / "training_summary.json").read_text())
    assert saved["best_checkpoint"] == summary["best_checkpoint"]


def test_early_stopping_ends_a_run_whose_eval_loss_gets_worse(tiny_model_dir, write_jsonl, tmp_path):
    # A learning rate far too high: after the first evaluation the held-out loss only gets worse.
    summary = train(load_config(None, settings(tiny_model_dir("llama"), write_jsonl(RECORDS), tmp_path / "run",
                                               "max_steps=40", "learning_rate=3", "lr_scheduler_type=constant",
                                               "early_stopping_patience=2")))
    evals = [e["eval_loss"] for e in summary["log_history"] if "eval_loss" in e][:-1]
    assert summary["steps"] < 40, evals
    assert min(evals) < evals[-1]


def test_settings_that_cannot_evaluate_are_refused(tmp_path):
    base = ["train_data_path=x.jsonl", f"output_dir={tmp_path}", "save_strategy=steps"]
    with pytest.raises(ConfigError, match="early_stopping_patience.*held-out data"):
        load_config(None, base + ["early_stopping_patience=2", "eval_strategy=steps"])
    with pytest.raises(ConfigError, match="early_stopping_patience.*eval_strategy"):
        load_config(None, base + ["early_stopping_patience=2", "val_set_size=0.1"])
    with pytest.raises(ConfigError, match="val_set_size"):
        load_config(None, base + ["val_set_size=-1"])
    with pytest.raises(ConfigError, match="save and eval strategy to match"):  # transformers' own check, kept
        load_config(None, base + ["early_stopping_patience=2", "val_set_size=0.1", "eval_strategy=epoch"])
    config = load_config(None, base + ["val_set_size=0.1"])
    assert config.training.metric_for_best_model == "eval_loss" and not config.training.load_best_model_at_end
