"""Real training runs: every method on the embedded model, and one step per tiny architecture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CHAT_RECORDS, TINY_ARCHS
from llm_dojo.config import load_config
from llm_dojo.recipes.sft import train

ROOT = Path(__file__).resolve().parents[1]


def logged_losses(summary: dict) -> list[float]:
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def run(tmp_path, data_path: str, **overrides) -> dict:
    settings = {"train_data_path": data_path, "output_dir": str(tmp_path / "out"), "max_steps": 4,
                "logging_steps": 1, "per_device_train_batch_size": 1, "seed": 0, "lora_dropout": 0.0,
                "warmup_steps": 0, "lr_scheduler_type": "constant", "max_len": 512}
    settings.update(overrides)
    config = load_config(None, [f"{k}={v}" for k, v in settings.items()])
    return train(config)


@pytest.mark.slow
@pytest.mark.parametrize("mode,extra", [
    ("lora", {"learning_rate": 1e-3}),
    ("qlora", {"learning_rate": 1e-3}),
    ("dora", {"learning_rate": 1e-3, "use_dora": True}),
    ("full", {"learning_rate": 5e-5}),
])
def test_each_method_lowers_the_loss_on_the_embedded_model(tmp_path, write_jsonl, mode, extra):
    train_mode = "lora" if mode == "dora" else mode
    summary = run(tmp_path, write_jsonl(CHAT_RECORDS), train_mode=train_mode, **extra)
    losses = logged_losses(summary)
    assert len(losses) == 4
    assert losses[-1] < losses[0] * 0.9, losses
    out = tmp_path / "out"
    weights = "model.safetensors" if mode == "full" else "adapter_model.safetensors"
    for name in (weights, "tokenizer.json", "chat_template.jinja", "dojo_config.yaml", "training_loss.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".saving-*")), "no staging folder may be left behind"


@pytest.mark.slow
def test_saved_adapter_loads_with_plain_peft_and_gives_dojo_logits(tmp_path, write_jsonl, embedded_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm_dojo.models.loading import load_for_inference

    run(tmp_path, write_jsonl(CHAT_RECORDS), learning_rate=1e-3)
    adapter_dir = tmp_path / "out"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"  # portable, not a cache path

    base = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ours, tokenizer = load_for_inference(adapter=str(adapter_dir), dtype=torch.float32)
    ids = tokenizer("<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n",
                    return_tensors="pt").input_ids
    with torch.no_grad():
        plain_logits = plain(ids).logits
        our_logits = ours(ids).logits
        with plain.disable_adapter():
            base_logits = plain(ids).logits
    assert (plain_logits - our_logits).abs().max().item() < 1e-5
    assert (plain_logits - base_logits).abs().max().item() > 1e-3  # the adapter really changes the model


@pytest.mark.slow
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_lora_qlora_and_dora_step_on_each_tiny_architecture(tmp_path, write_jsonl, tiny_model_dir, arch):
    from llm_dojo.models.loading import find_linear_targets, load_model

    folder = tiny_model_dir(arch)
    targets = find_linear_targets(load_model(folder, dtype=torch.float32))
    if arch == "phi3":
        assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} <= set(targets)
    else:
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(targets)
    assert "lm_head" not in targets
    data = write_jsonl(CHAT_RECORDS)
    for name, overrides in [("lora", {}), ("qlora", {"train_mode": "qlora"}), ("dora", {"use_dora": True})]:
        summary = run(tmp_path / name, data, model_name_or_path=folder, max_steps=1, learning_rate=1e-3, **overrides)
        losses = logged_losses(summary)
        assert len(losses) == 1 and losses[0] == losses[0] and losses[0] > 0, (arch, name, losses)
        assert (tmp_path / name / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_main_train_py_with_no_config_trains_the_demo_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "main_train.py", "max_steps=1", f"output_dir={tmp_path / 'demo'}", "max_samples=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "demo" / "adapter_model.safetensors").is_file()
    assert "data/demo_identity.jsonl" in (tmp_path / "demo" / "dojo_config.yaml").read_text()
