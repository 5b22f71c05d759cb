"""`trick_impl: dojo` trains through `dojo train` like the PEFT path, and our DoRA merges into a plain model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CHAT_RECORDS
from llm_dojo.config import load_config
from llm_dojo.recipes.sft import train

# Our layers and PEFT's draw their random A matrices differently, so the runs start from different (equally
# valid) inits; after a few steps on the same data the losses agree to within this relative tolerance.
SAME_LOSS_RTOL = 0.02  # measured: 0.4% apart after 5 steps (1.5496 vs 1.5432)


def run(tmp_path, data: str, name: str, **overrides):
    settings = {"train_data_path": data, "output_dir": str(tmp_path / name), "max_steps": 5, "logging_steps": 1,
                "learning_rate": 2e-4, "lora_dropout": 0.0, "seed": 0, "warmup_steps": 0,
                "lr_scheduler_type": "constant", "max_len": 512, "use_dora": True}
    settings.update(overrides)
    return train(load_config(None, [f"{k}={v}" for k, v in settings.items()]), return_model=True)


@pytest.mark.slow
def test_dojo_dora_and_peft_dora_reach_the_same_loss_and_ours_merges_for_plain_transformers(
        tmp_path, write_jsonl, embedded_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm_tricks.inject import merge_adapters

    data = write_jsonl(CHAT_RECORDS)
    peft_summary, _ = run(tmp_path, data, "peft", trick_impl="peft")
    dojo_summary, dojo_model = run(tmp_path, data, "dojo", trick_impl="dojo")
    peft_losses = [e["loss"] for e in peft_summary["log_history"] if "loss" in e]
    dojo_losses = [e["loss"] for e in dojo_summary["log_history"] if "loss" in e]
    assert peft_losses[0] == pytest.approx(dojo_losses[0], rel=1e-3)  # B = 0 at start: both equal the base loss
    assert dojo_losses[-1] < dojo_losses[0] * 0.9
    assert dojo_losses[-1] == pytest.approx(peft_losses[-1], rel=SAME_LOSS_RTOL)

    # The saved dojo adapter is PEFT-format: plain peft loads it and reproduces our model's logits.
    adapter_config = json.loads((tmp_path / "dojo" / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True and adapter_config["base_model_name_or_path"] == "smollm2-135m-instruct"
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 469, 1462, 47, 2, 198, 1, 520, 9531, 198]])
    dojo_model.eval()
    with torch.no_grad():
        ours = dojo_model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
        plain = PeftModel.from_pretrained(base, str(tmp_path / "dojo")).eval()
        assert (plain(input_ids=ids).logits - ours).abs().max().item() < 1e-4

        # Our merge gives a plain nn.Linear model that save_pretrained writes and AutoModelForCausalLM reads back.
        merged = merge_adapters(dojo_model)
        merged.save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
        assert (reloaded(input_ids=ids).logits - ours).abs().max().item() < 1e-4


@pytest.mark.slow
def test_dojo_neftune_and_loraplus_are_wired_into_training(tmp_path, write_jsonl, tiny_model_dir):
    """On a tiny model: our NEFTune changes the training loss (noise on), LoRA+ builds its optimizer groups."""
    data = write_jsonl(CHAT_RECORDS)
    common = {"model_name_or_path": tiny_model_dir("llama"), "use_dora": False, "trick_impl": "dojo", "max_steps": 1}
    plain, _ = run(tmp_path, data, "plain", **common)
    noisy, noisy_model = run(tmp_path, data, "noisy", neftune_noise_alpha=15, **common)
    first = lambda summary: [e["loss"] for e in summary["log_history"] if "loss" in e][0]  # noqa: E731
    assert first(noisy) != pytest.approx(first(plain), abs=1e-6)
    embeddings = noisy_model.get_input_embeddings()
    assert not embeddings._forward_hooks, "the NEFTune hook must be removed after training"
    loraplus, _ = run(tmp_path, data, "loraplus", loraplus_lr_ratio=16, **common)
    assert first(loraplus) == pytest.approx(first(plain), abs=1e-6)  # same start; only the step sizes differ
