"""Token-budget micro-batches: a batch bigger than `micro_batch_tokens` is split into rows under the budget and
accumulated, and the update equals the unsplit one, on the packed and the padded path."""

from __future__ import annotations

import pytest
import torch
import yaml

from llm_dojo.data.batching import (PackedCollator, PaddedCollator, pack_rows, rows_as_records,
                                    samples_as_records, split_by_token_budget)
from llm_dojo.data.encode import IGNORE_INDEX, EncodedSample
from llm_dojo.recipes.outputs import ListDataset
from llm_dojo.recipes.trainer import CountingCollator, DojoTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def samples(count: int, seed: int) -> list[EncodedSample]:
    """Samples of 10–60 tokens whose second half is trained."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index in range(count):
        length = int(torch.randint(10, 60, (1,), generator=generator))
        ids = torch.randint(5, 1000, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2:]
        out.append(EncodedSample(ids, labels, f"s{index}"))
    return out


def test_split_keeps_row_order_budget_and_trims_padding():
    rows = [{"input_ids": [1] * n, "labels": [1] * n, "position_ids": list(range(n))} for n in (30, 50, 20, 70)]
    batch = CountingCollator(PackedCollator(0))(rows)
    parts = split_by_token_budget(batch, batch["row_lengths"].tolist(), budget=80)
    assert [p["input_ids"].shape for p in parts] == [torch.Size([2, 50]), torch.Size([1, 20]), torch.Size([1, 70])]
    assert torch.equal(parts[0]["input_ids"], batch["input_ids"][:2, :50])
    assert split_by_token_budget(batch, batch["row_lengths"].tolist(), budget=170) == [batch]  # fits: unsplit


def test_a_flattened_flash_attention_batch_is_never_split():
    rows = [{"input_ids": [1] * n, "labels": [1] * n, "position_ids": list(range(n))} for n in (30, 50)]
    batch = PackedCollator(0, flatten=True)(rows)
    assert split_by_token_budget(batch, [30, 50], budget=16) == [batch]


def one_step(model_dir: str, output_dir, records: list[dict], collator, budget, lora: bool = False
             ) -> tuple[dict, dict, int]:
    """Parameters before and after one SGD step over all `records` as ONE batch, and the forward passes it took."""
    from transformers import AutoModelForCausalLM

    from llm_dojo.config import DojoTrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    args = DojoTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=len(records), gradient_accumulation_steps=1,
        max_steps=1, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
        train_sampling_strategy="sequential", use_cpu=True, report_to="none", save_strategy="no",
        remove_unused_columns=False, micro_batch_tokens=budget, dataloader_pin_memory=False,
    )
    trainer = DojoTrainer(model=model, args=args, train_dataset=ListDataset(records),
                          data_collator=CountingCollator(collator))
    trainer.train()
    return before, {k: v.detach().clone() for k, v in model.named_parameters()}, len(forwards)


@pytest.mark.parametrize("path, lora", [("packed", False), ("padded", False), ("packed", True), ("padded", True)])
def test_the_split_update_equals_the_unsplit_one(path, lora, tiny_model_dir, tmp_path):
    encoded = samples(12, seed=3)
    if path == "packed":
        records, collator = rows_as_records(pack_rows(encoded, capacity=100))[:4], PackedCollator(0)
    else:
        records, collator = samples_as_records(encoded[:4]), PaddedCollator(0)
    assert len(records) == 4
    before, whole, whole_forwards = one_step(tiny_model_dir("llama"), tmp_path / "whole", records, collator, None, lora)
    _, split, split_forwards = one_step(tiny_model_dir("llama"), tmp_path / "split", records, collator, 100, lora)
    assert whole_forwards == 1 and split_forwards > 1  # the budget really split the batch
    moved = max((whole[k] - before[k]).abs().max().item() for k in whole)
    worst = max((whole[k] - split[k]).abs().max().item() for k in whole)
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)  # fp32: the parts only reorder the gradients' sums


def test_a_cpu_run_defaults_to_one_max_len_row_per_forward():
    from llm_dojo.config import load_config
    from llm_dojo.recipes.sft import adjust_training_arguments

    config = load_config(None, ["train_data_path=x.jsonl", "max_len=256", "per_device_train_batch_size=8"])
    assert config.training.micro_batch_tokens is None
    adjust_training_arguments(config)
    assert config.training.micro_batch_tokens == (None if torch.cuda.is_available() else 256)
    explicit = load_config(None, ["train_data_path=x.jsonl", "micro_batch_tokens=2048"])
    adjust_training_arguments(explicit)
    assert explicit.training.micro_batch_tokens == 2048  # the user's setting wins


def test_checkpointing_is_chosen_from_the_memory_a_forward_needs_unless_the_user_set_it(tiny_model_dir, monkeypatch):
    import psutil
    from transformers import AutoModelForCausalLM

    from llm_dojo.config import load_config
    from llm_dojo.recipes import sft

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32)
    per_token = sft.activation_bytes_per_token(model.config, 4)
    assert per_token == 2 * 4 * (12 * 64 + 4 * 128)
    weights = sum(p.numel() * 4 for p in model.parameters())

    def run(free_bytes: int, tokens: int, *overrides: str) -> bool:
        monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": free_bytes})())
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        config = load_config(None, ["train_data_path=x.jsonl", "max_len=4096", f"micro_batch_tokens={tokens}",
                                    *overrides])
        sft.choose_checkpointing(config, model)
        chosen = config.training.gradient_checkpointing
        # the Trainer reads transformers 5's new name: a choice made after construction must reach it too
        assert getattr(config.training, "activation_checkpointing", chosen) == chosen
        return chosen

    small = weights // per_token // 2  # activations half the weights' size
    large = 2 * weights // per_token  # activations twice the weights' size
    plenty = 1000 * weights
    assert run(plenty, small) is False  # small beside the weights and fits comfortably: no recomputation
    assert run(plenty, large) is True  # would be most of the peak: checkpoint
    assert run(small * per_token * 2, small) is True  # would take half the free memory: checkpoint
    assert run(plenty, small, "train_mode=full") is False  # full training holds 4x the weights: still small
    assert run(plenty, 3 * weights // per_token, "train_mode=full") is False
    assert run(plenty, 5 * weights // per_token, "train_mode=full") is True
    assert run(plenty, large, "gradient_checkpointing=false") is False  # the user's explicit choice wins
    assert run(plenty, small, "gradient_checkpointing=true") is True
    assert run(plenty, large, "activation_checkpointing=false") is False  # under its new name as well


@pytest.mark.slow
@pytest.mark.parametrize("large_activations", [True, False])
def test_the_chosen_checkpointing_is_what_the_trainer_runs(large_activations, tiny_model_dir, tmp_path, write_jsonl,
                                                            monkeypatch):
    """transformers 5 reads `activation_checkpointing`; a choice made after the arguments exist must still apply."""
    from llm_dojo.config import load_config
    from llm_dojo.recipes import sft

    monkeypatch.setattr(sft, "activation_bytes_per_token", lambda *a: 1 << 30 if large_activations else 1)
    data = write_jsonl([{"instruction": "Hi", "output": "Hello"}] * 2)
    summary, model = sft.train(load_config(None, [
        f"model_name_or_path={tiny_model_dir('llama')}", f"train_data_path={data}", f"output_dir={tmp_path / 'out'}",
        "max_steps=1", "model_dtype=fp32", "disable_tqdm=true"]), return_model=True)
    base = model.get_base_model()
    assert base.is_gradient_checkpointing is large_activations
    saved = yaml.safe_load((tmp_path / "out" / "dojo_config.yaml").read_text())
    assert saved["gradient_checkpointing"] is large_activations
