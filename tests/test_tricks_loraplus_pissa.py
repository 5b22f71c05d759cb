"""LoRA+ builds PEFT's exact optimizer groups and they reach the Trainer's optimizer; PiSSA starts from the base
model's output with PEFT's A, B and residual."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from llm_tricks.inject import inject_adapters
from llm_tricks.lora import LoRALinear
from llm_tricks.lora_plus import create_loraplus_optimizer, loraplus_param_groups
from llm_tricks.pissa import apply_pissa, pissa_init_

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(attention_bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=attention_bias,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def ours_name(peft_name: str) -> str:
    """Map a PEFT parameter name onto the name of the same tensor in our injected model."""
    name = peft_name.removeprefix("base_model.model.")
    name = name.replace(".lora_A.default.weight", ".lora_A").replace(".lora_B.default.weight", ".lora_B")
    name = name.replace(".lora_magnitude_vector.default.weight", ".magnitude")
    return name.replace(".base_layer.", ".base.")


@pytest.mark.parametrize("use_dora", [False, True])
def test_loraplus_groups_and_learning_rates_equal_peft(use_dora):
    model = tiny_llama(attention_bias=True)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                  use_dora=use_dora, task_type="CAUSAL_LM"))
    inject_adapters(model, TARGETS, r=4, lora_alpha=8, use_dora=use_dora)
    # Also train the attention biases and the final norm, to fill the decay / no-decay groups.
    for m in (model, peft_model):
        for name, p in m.named_parameters():
            if name.endswith("proj.base.bias") or name.endswith("proj.base_layer.bias") or name.endswith("model.norm.weight"):
                p.requires_grad_(True)

    kwargs = dict(lr=2e-4, loraplus_lr_ratio=16, loraplus_weight_decay=0.1)
    peft_opt = peft_create_loraplus_optimizer(peft_model, torch.optim.AdamW, **kwargs)
    our_opt = create_loraplus_optimizer(model, torch.optim.AdamW, **kwargs)
    peft_names = {id(p): n for n, p in peft_model.named_parameters()}

    assert len(our_opt.param_groups) == len(peft_opt.param_groups) == 4
    for ours, theirs in zip(our_opt.param_groups, peft_opt.param_groups):
        assert ours["lr"] == theirs["lr"] and ours["weight_decay"] == theirs["weight_decay"]
        assert ours["names"] == [ours_name(peft_names[id(p)]) for p in theirs["params"]]
    lrs = [g["lr"] for g in our_opt.param_groups]
    assert lrs == [2e-4, 1e-6, 2e-4 * 16, 2e-4 * 16]
    a_group, embedding_group, b_group, b_no_decay = our_opt.param_groups
    assert all(n.endswith("lora_A") for n in a_group["names"]) and not embedding_group["params"]
    assert any(n.endswith("lora_B") for n in b_group["names"]) and "model.norm.weight" in b_group["names"]
    assert b_no_decay["names"] and all(n.endswith("bias") for n in b_no_decay["names"])
    assert b_no_decay["weight_decay"] == 0.0
    assert any(n.endswith("magnitude") for n in b_group["names"]) == use_dora  # PEFT: magnitude trains fast too


def test_loraplus_param_groups_put_b_at_ratio_times_lr():
    model = tiny_llama()
    inject_adapters(model, ["q_proj"], r=2, lora_alpha=4)
    groups = loraplus_param_groups(model, lr=1e-3, loraplus_lr_ratio=16)
    assert [len(g["params"]) for g in groups] == [2, 0, 2, 0]
    assert groups[0]["lr"] == 1e-3 and groups[2]["lr"] == 16e-3


def test_loraplus_refuses_a_model_without_adapters():
    with pytest.raises(ValueError, match="inject_adapters"):
        create_loraplus_optimizer(tiny_llama(), lr=1e-3)


# ---- LoRA+ reaches the Trainer's optimizer --------------------------------------------------------------------

LORAPLUS_LR, LORAPLUS_RATIO = 1e-3, 16


def one_trainer_step(tmp_path, model_dir: str, trick_impl: str, ratio):
    """Build the model and optimizer as `dojo train` does, run one DojoTrainer step; return (trainer, ΔB by name)."""
    from llm_dojo.config import load_config
    from llm_dojo.models.adapters import build_optimizer, make_trainable
    from llm_dojo.models.loading import load_model
    from llm_dojo.recipes.trainer import DojoTrainer

    settings = {"model_name_or_path": model_dir, "train_data_path": "unused.jsonl", "trick_impl": trick_impl,
                "output_dir": str(tmp_path / f"{trick_impl}-{ratio}"), "learning_rate": LORAPLUS_LR,
                "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_steps": 1,
                "per_device_train_batch_size": 2, "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                "report_to": "none", "seed": 0}
    if ratio is not None:
        settings["loraplus_lr_ratio"] = ratio
    config = load_config(None, [f"{k}={v}" for k, v in settings.items()])
    torch.manual_seed(0)  # the same A matrices in the runs with and without LoRA+
    model = make_trainable(load_model(model_dir, dtype=torch.float32), config)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert before and all(b.abs().max() == 0 for b in before.values())  # B starts at zero: only B moves in step 1

    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    rows = [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]
    trainer = DojoTrainer(model=model, args=config.training, train_dataset=rows,
                          data_collator=lambda batch: {k: torch.stack([row[k] for row in batch]) for k in batch[0]},
                          optimizers=(build_optimizer(model, config), None))
    trainer.train()
    after = dict(model.named_parameters())
    return trainer, {n: (after[n] - b).detach() for n, b in before.items()}


@pytest.mark.parametrize("trick_impl", ["peft", "dojo"])
def test_loraplus_ratio_reaches_the_trainer_optimizer_and_b_moves_ratio_times_further(
        tmp_path, tiny_model_dir, trick_impl):
    model_dir = tiny_model_dir("llama")
    trainer, plus_step = one_trainer_step(tmp_path, model_dir, trick_impl, LORAPLUS_RATIO)

    # Every LoRA matrix is in exactly one group of the optimizer the Trainer stepped, at the LoRA+ learning rate.
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lr_of = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in lr_of
            lr_of[names[id(p)]] = group["lr"]
    lora_a = [n for n in names.values() if "lora_A" in n]
    lora_b = [n for n in names.values() if "lora_B" in n]
    assert len(lora_a) == len(lora_b) == 2 * 7  # 2 layers × 7 linear layers (q k v o gate up down)
    assert {lr_of[n] for n in lora_a} == {LORAPLUS_LR}
    assert {lr_of[n] for n in lora_b} == {LORAPLUS_LR * LORAPLUS_RATIO}

    # Adam's first step moves each weight by lr·g/(|g|+eps) ≈ lr: B moves ratio× as far as with one shared lr.
    _, plain_step = one_trainer_step(tmp_path, model_dir, trick_impl, None)
    plus = torch.cat([d.flatten() for d in plus_step.values()])
    plain = torch.cat([d.flatten() for d in plain_step.values()])
    assert plain.abs().max().item() == pytest.approx(LORAPLUS_LR, rel=1e-3)
    assert plus.abs().max().item() == pytest.approx(LORAPLUS_LR * LORAPLUS_RATIO, rel=1e-3)
    assert (plus.norm() / plain.norm()).item() == pytest.approx(LORAPLUS_RATIO, rel=1e-2)


@pytest.mark.parametrize("trick_impl", ["peft", "dojo"])
def test_loraplus_optimizer_applies_the_configured_weight_decay(trick_impl):
    from llm_dojo.config import load_config
    from llm_dojo.models.adapters import build_optimizer, make_trainable

    config = load_config(None, ["train_data_path=unused.jsonl", f"trick_impl={trick_impl}", "loraplus_lr_ratio=16",
                                "weight_decay=0.1", "learning_rate=1e-3", "report_to=none"])
    optimizer = build_optimizer(make_trainable(tiny_llama(), config), config)
    # groups: A, embedding, B, B without decay (biases and LayerNorm weights)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1, 0.1, 0.0]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_init_equals_peft_and_keeps_the_layer_output(use_rslora):
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    peft_layer = get_peft_model(nn.Sequential(copy.deepcopy(base)), LoraConfig(
        r=4, lora_alpha=8, target_modules=["0"], init_lora_weights="pissa", use_rslora=use_rslora)).base_model.model[0]
    ours = LoRALinear(copy.deepcopy(base), r=4, lora_alpha=8, use_rslora=use_rslora)
    pissa_init_(ours)
    torch.testing.assert_close(ours.lora_A, peft_layer.lora_A["default"].weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.lora_B, peft_layer.lora_B["default"].weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.base.weight, peft_layer.base_layer.weight, atol=1e-6, rtol=0)
    # s·B·A is the best rank-r approximation of W0: its singular values are W0's top four.
    s_principal = torch.linalg.svdvals(ours.delta_weight().detach())[:4]
    torch.testing.assert_close(s_principal, torch.linalg.svdvals(base.weight)[:4], atol=1e-5, rtol=0)
    x = torch.randn(5, 24)
    torch.testing.assert_close(ours(x), base(x), atol=1e-5, rtol=0)


def test_pissa_model_output_equals_base_model_output():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    inject_adapters(model, TARGETS, r=4, lora_alpha=8)
    assert len(apply_pissa(model)) == 2 * len(TARGETS)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)
