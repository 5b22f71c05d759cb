"""LoRA (Hu et al., arXiv:2106.09685) and rsLoRA (Kalajdzievski, arXiv:2312.03732) in plain PyTorch.

A frozen linear layer y = W0·x + b learns a low-rank correction instead of a full new weight:

    y = W0·x + b + s · B·(A·x)        A: (r, in), B: (out, r), r ≪ min(in, out)

with s = alpha / r (LoRA) or s = alpha / sqrt(r) (rsLoRA). B starts at zero, so the layer starts out
exactly equal to the frozen one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """The factor s in front of B·A: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update s·B·A (LoRA, or rsLoRA with `use_rslora=True`)."""

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got r={r}")
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)

        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(r, lora_alpha, use_rslora)
        # Dropout acts on the adapter's input only; the frozen path always sees the clean input.
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, dtype=weight.dtype, device=weight.device))
        self.reset_lora_parameters()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self) -> None:
        """A like a fresh nn.Linear (Kaiming-uniform, a=sqrt(5)), B zero: the update B·A starts at exactly 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The full-size update s·B·A, shape (out_features, in_features)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:  # the update already lives inside base.weight
            return result
        # Two thin matmuls, x→(r)→(out): never builds the (out, in) matrix B·A.
        lora_out = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return result + lora_out * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s·B·A into the frozen weight: W = W0 + s·B·A. Forward then costs the same as a plain layer."""
        if self.merged:
            return
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take s·B·A back out of the frozen weight, restoring W0 (up to float rounding)."""
        if not self.merged:
            return
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        kind = "rsLoRA" if self.use_rslora else "LoRA"
        return f"{kind}: r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, merged={self.merged}"
