"""LoRA+ (Hayou, Ghosh & Yu, arXiv:2402.12354): train B with a larger learning rate than A.

In a LoRA update s·B·A, A (r × in) reads the wide input and B (out × r) writes the wide output. The paper
shows that for wide layers one shared learning rate is inefficient: B should move with lr_B = λ·lr_A,
λ ≈ 16 (`loraplus_lr_ratio`). Nothing else changes — it is purely a choice of optimizer parameter groups.

The groups below follow `peft.optimizers.create_loraplus_optimizer` one to one (same order, same rules), so a
run with our layers and a run with PEFT's layers get identical optimizers:

  0. "A":               lora_A and every other trainable matrix (ndim ≥ 2)     lr,              weight decay wd
  1. "embedding":       LoRA on embedding layers (our layers never create any)  loraplus_lr_embedding, wd
  2. "B":               lora_B and every 1-D tensor (DoRA magnitude, biases,    lr × ratio,      wd
                        norms) that is eligible for weight decay
  3. "B_no_decay":      the same, but biases or parameters inside nn.LayerNorm  lr × ratio,      0.0

Note that, as in PEFT, DoRA's magnitude vector (1-D) lands in the fast "B" group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_tricks.lora.lora import LoRALinear
from llm_tricks.dora.dora import DoRALinear


def _names_eligible_for_decay(model: nn.Module) -> set[str]:
    """Parameter names that may get weight decay: not a bias and not inside an nn.LayerNorm (transformers' rule)."""
    excluded: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            prefix = f"{module_name}." if module_name else ""
            excluded.update(prefix + n for n, _ in module.named_parameters())
    # RMSNorm layers are not nn.LayerNorm, so (as in transformers and PEFT) their weights stay eligible.
    return {n for n, _ in model.named_parameters() if n not in excluded and "bias" not in n}


def loraplus_param_groups(
    model: nn.Module,
    lr: float,
    loraplus_lr_ratio: float = 16.0,
    loraplus_weight_decay: float = 0.0,
    loraplus_lr_embedding: float = 1e-6,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for LoRA+: B (and 1-D tensors) at lr × ratio, A and the rest at lr."""
    decay_ok = _names_eligible_for_decay(model)
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Our LoRALinear/DoRALinear only wrap nn.Linear, so the "embedding" group stays empty; it is kept so that
        # the group list lines up with PEFT's (which puts LoRA-on-nn.Embedding adapters there).
        if name.endswith("lora_B") or param.ndim == 1:
            groups["B" if name in decay_ok else "B_no_decay"].append((name, param))
        else:
            groups["A"].append((name, param))

    def group(key: str, group_lr: float, weight_decay: float) -> dict[str, Any]:
        return {"params": [p for _, p in groups[key]], "names": [n for n, _ in groups[key]],
                "lr": group_lr, "weight_decay": weight_decay}

    return [
        group("A", lr, loraplus_weight_decay),
        group("embedding", loraplus_lr_embedding, loraplus_weight_decay),
        group("B", lr * loraplus_lr_ratio, loraplus_weight_decay),
        group("B_no_decay", lr * loraplus_lr_ratio, 0.0),
    ]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW, *,
                              lr: float, loraplus_lr_ratio: float = 16.0, loraplus_weight_decay: float = 0.0,
                              loraplus_lr_embedding: float = 1e-6, **kwargs: Any) -> torch.optim.Optimizer:
    """An optimizer (AdamW by default) over `loraplus_param_groups`; extra kwargs go to the optimizer."""
    if not any(isinstance(m, (LoRALinear, DoRALinear)) for m in model.modules()):
        raise ValueError("LoRA+ needs adapter layers: call llm_tricks.inject.inject_adapters(model, ...) first")
    groups = loraplus_param_groups(model, lr, loraplus_lr_ratio, loraplus_weight_decay, loraplus_lr_embedding)
    return optimizer_cls(groups, lr=lr, **kwargs)
