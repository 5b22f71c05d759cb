"""Training outputs shared by every recipe: atomic saving, the saved config and chat format, held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from llm_dojo.data.chat_format import CHAT_FORMAT_FILE, ChatFormat, resolve_chat_format
from llm_dojo.recipes import outputs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_failure_while_saving_leaves_the_previous_output_intact(tmp_path, smol_tokenizer, monkeypatch):
    chat_format = resolve_chat_format(smol_tokenizer)
    summary = {"train_loss": 1.0, "log_history": [{"step": 1, "loss": 1.0}]}

    def weights(version: str):
        return lambda folder: (folder / "adapter_model.safetensors").write_text(version)

    outputs.save_outputs(tmp_path, weights("first"), smol_tokenizer, chat_format, {"lora_rank": 8}, summary)
    before = snapshot(tmp_path)
    assert {"adapter_model.safetensors", CHAT_FORMAT_FILE, "dojo_config.yaml", "training_summary.json",
            "training_loss.png", "tokenizer_config.json"} <= set(before)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(outputs, "plot_loss", disk_full)  # fails after the new weights were written
    with pytest.raises(OSError, match="simulated"):
        outputs.save_outputs(tmp_path, weights("second"), smol_tokenizer, chat_format, {"lora_rank": 16}, summary)
    assert snapshot(tmp_path) == before  # not one file of the failed save reached output_dir
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".saving-")] == []


def test_the_saved_chat_format_reads_back_equal(tmp_path, smol_tokenizer):
    chat_format = resolve_chat_format(smol_tokenizer)
    chat_format.save(tmp_path)
    assert ChatFormat.from_file(tmp_path / CHAT_FORMAT_FILE) == chat_format


def test_heldout_loss_accepts_collators_that_add_plain_numbers(tiny_model_dir):
    """The flash-attention collator puts ints (max_length_q/k) in the batch; only tensors move to the device."""
    from transformers import AutoModelForCausalLM

    from llm_dojo.data.batching import PackedCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32)
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8], "position_ids": [0, 1, 2, 3]}]
    plain = outputs.heldout_loss(model, rows, PackedCollator(0))

    def with_numbers(batch_rows):
        return {**PackedCollator(0)(batch_rows), "max_length_q": 4, "max_length_k": 4}

    assert outputs.heldout_loss(model, rows, with_numbers) == pytest.approx(plain)


@pytest.mark.slow
def test_dojo_neftune_is_recorded_as_on_in_the_saved_config(tiny_model_dir, tmp_path, write_jsonl):
    from llm_dojo.config import load_config
    from llm_dojo.recipes.sft import train

    data = write_jsonl([{"instruction": "Hi", "output": "Hello"}] * 2)
    train(load_config(None, [f"model_name_or_path={tiny_model_dir('llama')}", f"train_data_path={data}",
                             f"output_dir={tmp_path / 'out'}", "trick_impl=dojo", "neftune_noise_alpha=5",
                             "max_steps=1", "model_dtype=fp32", "disable_tqdm=true"]))
    saved = yaml.safe_load((tmp_path / "out" / "dojo_config.yaml").read_text())
    assert saved["neftune_noise_alpha"] == 5 and saved["trick_impl"] == "dojo"
    assert json.loads((tmp_path / "out" / CHAT_FORMAT_FILE).read_text())["terminator"] == "<|im_end|>"
