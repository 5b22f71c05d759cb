"""Preference stages in `dojo train`: the reference, packed pairs, the loss scale, metrics and saved outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llm_dojo.config import load_config
from llm_dojo.data.pair_batching import PreferenceCollator, split_units_by_budget
from llm_dojo.recipes.preference import sample_logps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOG_2 = math.log(2)


def pair_records(n: int = 12) -> list[dict]:
    # Lengths vary a lot (1 to ~60 words), so packing, padding and budget splits all have something to do.
    return [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": "I am not sure, " + "maybe " * (i * 5) + f"{2 * i + 1}."} for i in range(n)]


def kto_records(n: int = 12) -> list[dict]:
    pairs = pair_records(n)
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
            for i, p in enumerate(pairs)]


def config_for(tmp_path, data: str, model: str, **overrides):
    values = {"train_data_path": data, "model_name_or_path": model, "output_dir": str(tmp_path / "out"),
              "overwrite_output_dir": True, "max_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4,
              "learning_rate": 1e-3, "disable_tqdm": True, "stage": "dpo", **overrides}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def build_trainer(tmp_path, data, model_dir, **overrides):
    """The recipe's trainer, set up as train_preference does it, without training."""
    from llm_dojo.data.preference import prepare_preference_data
    from llm_dojo.models.adapters import build_optimizer
    from llm_dojo.models.loading import load_tokenizer
    from llm_dojo.recipes.outputs import ListDataset
    from llm_dojo.recipes.preference import PreferenceTrainer, frozen_reference_copy
    from llm_dojo.recipes.sft import adjust_training_arguments, load_trainable_model
    from llm_dojo.recipes.trainer import CountingCollator

    config = config_for(tmp_path, data, model_dir, **overrides)
    tokenizer = load_tokenizer(model_dir)
    prepared = prepare_preference_data(config.data, config.stage.stage, tokenizer)
    adjust_training_arguments(config)
    config.training.train_sampling_strategy = "random"
    model = load_trainable_model(config)
    ref_model = frozen_reference_copy(model) if config.model.train_mode == "full" else None
    collator = PreferenceCollator(tokenizer.pad_token_id, config.data.max_len, packing=config.data.packing,
                                  kto=config.stage.stage == "kto")
    trainer = PreferenceTrainer(model=model, args=config.training, train_dataset=ListDataset(prepared.train),
                                data_collator=CountingCollator(collator), processing_class=tokenizer,
                                optimizers=(build_optimizer(model, config), None), stage=config.stage,
                                ref_model=ref_model)
    return trainer, prepared, collator


def first_batch_loss(trainer, items, collator) -> torch.Tensor:
    batch = trainer._prepare_inputs(collator(items))
    return trainer.compute_loss(trainer.model, batch)


@pytest.fixture
def pairs_file(write_jsonl):
    return write_jsonl(pair_records(), "pairs.jsonl")


def test_step_zero_dpo_loss_is_log_2_three_ways(tmp_path, pairs_file, tiny_model_dir):
    """Disabled adapter, an explicit frozen copy, and precomputed reference log-probs: all log 2 at step 0."""
    from llm_dojo.recipes.preference import frozen_reference_copy

    model_dir = tiny_model_dir("llama")
    trainer, prepared, collator = build_trainer(tmp_path, pairs_file, model_dir)
    items = prepared.train[:6]
    disabled = first_batch_loss(trainer, items, collator)
    trainer.ref_model = frozen_reference_copy(trainer.model.get_base_model())
    frozen = first_batch_loss(trainer, items, collator)
    trainer.ref_model = None
    precomputed_items = [dict(item) for item in items]
    trainer.precompute_reference(precomputed_items, batch_size=4)
    precomputed = first_batch_loss(trainer, precomputed_items, collator)
    for loss in (disabled, frozen, precomputed):
        assert abs(loss.item() - LOG_2) < 1e-5, (disabled, frozen, precomputed)
    assert abs(disabled.item() - frozen.item()) < 1e-5 and abs(disabled.item() - precomputed.item()) < 1e-5


def test_the_reference_is_the_base_in_eval_mode_before_and_after_training(tmp_path, pairs_file, tiny_model_dir):
    """Catches a reference computed with the adapter on, or in training mode (dropout), and the policy's mode
    not being restored."""
    from llm_dojo.models.loading import load_tokenizer
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama")
    # Dropout in the base model: a reference scored in training mode would change from call to call.
    dropout_dir = tmp_path / "tiny-dropout"
    model = AutoModelForCausalLM.from_pretrained(model_dir, attention_dropout=0.5)
    model.save_pretrained(dropout_dir)
    load_tokenizer(model_dir).save_pretrained(dropout_dir)
    trainer, prepared, collator = build_trainer(tmp_path, pairs_file, str(dropout_dir), lora_dropout=0.3)
    batch = trainer._prepare_inputs(collator(prepared.train[:4]))
    trainer.model.train()
    before = trainer.reference_logps(trainer.model, batch)
    assert trainer.model.training  # restored
    torch.testing.assert_close(trainer.reference_logps(trainer.model, batch), before)  # eval mode: no dropout
    trainer.train()
    after = trainer.reference_logps(trainer.model, batch)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # training moved the adapter, not the reference
    trainer.model.eval()
    policy, _ = sample_logps(trainer.model, batch)
    assert (policy - after).abs().max() > 1e-3  # ... and the adapter did move


def test_packed_pairs_give_the_padded_log_probs(tmp_path, pairs_file, tiny_model_dir):
    from llm_dojo.models.loading import load_model

    model_dir = tiny_model_dir("llama")
    trainer, prepared, _ = build_trainer(tmp_path, pairs_file, model_dir)
    model = load_model(model_dir, dtype=torch.float32).eval()
    from llm_dojo.attention import register

    items = prepared.train
    padded = PreferenceCollator(0, 2048, packing=False)(items)
    with torch.no_grad():
        padded_sums, padded_counts = sample_logps(model, padded)
        model.set_attn_implementation(register())  # per-sample attention inside packed rows, as training uses
        packed = PreferenceCollator(0, 150, packing=True)(items)
        assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # several pairs share a row
        packed_sums, packed_counts = sample_logps(model, packed)
        model.set_attn_implementation("sdpa")  # transformers' own block-diagonal mask from position_ids
        sdpa_sums, _ = sample_logps(model, packed)
    assert torch.equal(packed_counts, padded_counts)
    assert (packed_sums - padded_sums).abs().max() < 1e-4
    assert (sdpa_sums - padded_sums).abs().max() < 1e-4


def test_budget_split_keeps_pairs_whole_and_the_gradient_unchanged(tmp_path, pairs_file, tiny_model_dir):
    trainer, prepared, _ = build_trainer(tmp_path, pairs_file, tiny_model_dir("llama"), lora_dropout=0)
    batch = PreferenceCollator(0, capacity=150)(prepared.train[:8])  # several rows of one or more pairs
    parts = split_units_by_budget(batch, budget=200)
    assert len(parts) > 2
    for part in parts:  # both sides of every pair present in the part are in it
        ids = set(part["sample_index"][part["sample_index"] >= 0].tolist())
        assert all((i ^ 1) in ids for i in ids)

    def gradient(pieces) -> torch.Tensor:
        trainer.model.zero_grad()
        for piece in pieces:
            loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(piece), num_items_in_batch=8)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])

    torch.testing.assert_close(gradient(parts), gradient([batch]), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("stage,overrides", [
    ("dpo", {}), ("dpo", {"dpo_loss_type": "ipo"}), ("dpo", {"precompute_ref_log_probs": True}),
    ("simpo", {}), ("orpo", {}), ("kto", {}), ("kto", {"precompute_ref_log_probs": True}),
    ("dpo", {"packing": False}), ("dpo", {"train_mode": "qlora"}), ("dpo", {"use_dora": True}),
])
def test_each_stage_trains_logs_its_metrics_and_saves_a_peft_adapter(tmp_path, write_jsonl, tiny_model_dir, stage,
                                                                     overrides):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm_dojo.recipes.sft import train

    data = write_jsonl(kto_records() if stage == "kto" else pair_records(), "data.jsonl")
    model_dir = tiny_model_dir("llama")
    summary = train(config_for(tmp_path, data, model_dir, stage=stage, max_steps=3, **overrides))
    logged = [entry for entry in summary["log_history"] if "loss" in entry]
    assert len(logged) == 3 and all(math.isfinite(entry["loss"]) for entry in logged)
    expected = {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}
    expected |= {"kl"} if stage == "kto" else {"rewards/accuracies"}
    assert expected <= set(logged[-1]), logged[-1]
    if stage == "dpo" and overrides.get("dpo_loss_type", "sigmoid") == "sigmoid":
        assert abs(logged[0]["loss"] - LOG_2) < 1e-5  # the adapter starts as a no-op
        assert logged[0]["rewards/margins"] == 0
    if stage == "kto":  # with or without precomputed reference numbers
        assert abs(logged[0]["loss"] - 0.5) < 1e-5 and logged[0]["kl"] == 0  # 1 − σ(0), drift clamped at 0
    out = tmp_path / "out"
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["stage"] == stage and saved["samples"] == 12
    assert "stage: " + stage in (out / "dojo_config.yaml").read_text()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out))  # plain PEFT loads
    assert sum(p.abs().sum() for n, p in model.named_parameters() if "lora_B" in n) > 0


@pytest.mark.parametrize("precompute", [False, True])
def test_full_fine_tuning_uses_a_frozen_copy_or_precomputed_numbers(tmp_path, pairs_file, tiny_model_dir, precompute):
    from llm_dojo.recipes.sft import train

    summary = train(config_for(tmp_path, pairs_file, tiny_model_dir("llama"), train_mode="full", max_steps=2,
                               learning_rate=1e-4, precompute_ref_log_probs=precompute))
    logged = [entry for entry in summary["log_history"] if "loss" in entry]
    assert abs(logged[0]["loss"] - LOG_2) < 1e-5
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("overrides,message", [
    ({"stage": "simpo", "precompute_ref_log_probs": True}, "precompute_ref_log_probs' applies to dpo and kto"),
    ({"trick_impl": "dojo"}, "preference stages use PEFT adapters"),
    ({"beta": 0}, "'beta' must be positive"),
    ({"dpo_loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\) for dpo_loss_type robust"),
    ({"stage": "ppo"}, "stage"),
])
def test_impossible_preference_settings_are_refused(tmp_path, overrides, message):
    from llm_dojo.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_for(tmp_path, "data.jsonl", "smollm2-135m-instruct", **overrides)


def test_a_kto_file_given_to_dpo_says_so(tmp_path, write_jsonl, tiny_model_dir):
    from llm_dojo.data.sources import DataError
    from llm_dojo.recipes.sft import train

    data = write_jsonl(kto_records(), "kto.jsonl")
    with pytest.raises(DataError, match=r"kto\.jsonl:1: field 'chosen' is missing.*use stage: kto"):
        train(config_for(tmp_path, data, tiny_model_dir("llama")))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_gradient_accumulation_equals_one_big_batch(tmp_path, pairs_file, tiny_model_dir):
    """4 pairs in one batch, or 2 × 2 accumulated: the same update (the loss is a mean over the window's pairs)."""
    from safetensors.torch import load_file

    from llm_dojo.recipes.sft import train

    adapters = []
    for name, batch, accumulation in (("whole", 4, 1), ("accumulated", 2, 2)):
        out = tmp_path / name
        train(config_for(out, pairs_file, tiny_model_dir("llama"), max_steps=1, per_device_train_batch_size=batch,
                         gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=0.5, lora_dropout=0,
                         micro_batch_tokens=100000))
        adapters.append(load_file(str(out / "out" / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    moved = max(float(t.abs().max()) for k, t in adapters[0].items() if "lora_B" in k)
    assert moved > 1e-4  # the step really changed B
    for key in adapters[0]:
        torch.testing.assert_close(adapters[0][key], adapters[1][key], rtol=1e-4, atol=1e-6)
