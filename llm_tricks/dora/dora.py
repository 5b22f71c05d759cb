"""DoRA: weight-decomposed low-rank adaptation (Liu et al., arXiv:2402.09353) in plain PyTorch.

DoRA splits every output unit's weight row into a length and a direction, and trains them separately:

    W' = m · (W0 + s·B·A) / ‖W0 + s·B·A‖          (norm taken over each output row, i.e. per output unit)

- m, shape (out_features,), the magnitude, starts at ‖W0‖ per row, so W' = W0 at the start;
- the direction is the LoRA-updated weight W0 + s·B·A, rescaled to unit length per row;
- the norm ‖W0 + s·B·A‖ is treated as a constant in the backward pass (paper, section 4.3): it saves memory
  and, the authors report, costs no accuracy. `detach_norm=False` exists only to show that this choice is real.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_tricks.lora.lora import lora_scaling


class DoRALinear(nn.Module):
    """A frozen nn.Linear re-parametrised as magnitude × direction, with a LoRA update on the direction."""

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 use_rslora: bool = False, detach_norm: bool = True):
        super().__init__()
        if r <= 0:
            raise ValueError(f"DoRA rank r must be a positive integer, got r={r}")
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)

        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(r, lora_alpha, use_rslora)
        self.detach_norm = detach_norm
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # m = ‖W0 + s·B·A‖ per output row; with B = 0 that is the length of each row of W0.
        self.magnitude = nn.Parameter(self.weight_norm().detach().clone())
        self.merged = False
        # The norm used at merge time, kept so that unmerge can divide it back out exactly.
        self.register_buffer("_merged_norm", None, persistent=False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The LoRA update s·B·A, shape (out_features, in_features)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def weight_norm(self) -> torch.Tensor:
        """‖W0 + s·B·A‖ over each output row, shape (out_features,); no gradient path unless detach_norm=False."""
        # base.weight holds W0 here: forward only calls this while the layer is unmerged.
        lora_weight = self.lora_B @ self.lora_A
        if self.detach_norm:
            lora_weight = lora_weight.detach()
        return torch.linalg.norm(self.base.weight + self.scaling * lora_weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # W0·x + b
        if self.merged:
            return result

        norm = self.weight_norm()
        if self.detach_norm:
            norm = norm.detach()  # paper sec. 4.3: a constant for backprop, but recomputed every step
        scale = (self.magnitude / norm).view(1, -1)  # m / ‖W0 + s·B·A‖, one factor per output unit

        x_adapter = self.lora_dropout(x)
        lora_out = F.linear(F.linear(x_adapter, self.lora_A), self.lora_B) * self.scaling
        if x_adapter is x:
            # No dropout: reuse the frozen output instead of another (out, in) matmul.
            base_out = result if self.base.bias is None else result - self.base.bias
        else:
            base_out = F.linear(x_adapter, self.base.weight)  # W0·x̃ on the dropped-out input, no bias

        # Without dropout this is b + scale·(W0·x + s·B·A·x) = b + W'·x, the DoRA weight applied to x.
        # With dropout the DoRA part sees the dropped-out x̃ while the frozen W0·x keeps the clean x:
        #   b + W0·x + (scale − 1)·W0·x̃ + scale·s·B·A·x̃
        return result + (scale - 1) * base_out + scale * lora_out

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W' = m · (W0 + s·B·A) / ‖W0 + s·B·A‖, the weight a plain nn.Linear needs to reproduce this layer."""
        if self.merged:
            return self.base.weight.clone()
        updated = self.base.weight + self.delta_weight()
        return (self.magnitude / torch.linalg.norm(updated, dim=1)).view(-1, 1) * updated

    @torch.no_grad()
    def merge(self) -> None:
        """Write W' into the frozen layer; forward then costs the same as a plain layer."""
        if self.merged:
            return
        updated = self.base.weight + self.delta_weight()
        self._merged_norm = torch.linalg.norm(updated, dim=1)
        self.base.weight.copy_((self.magnitude / self._merged_norm).view(-1, 1) * updated)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 = W' · ‖W0 + s·B·A‖ / m − s·B·A, using the norm saved at merge time."""
        if not self.merged:
            return
        factor = (self.magnitude / self._merged_norm).view(-1, 1)
        self.base.weight.copy_(self.base.weight / factor - self.delta_weight())
        self._merged_norm = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"DoRA: r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, merged={self.merged}"
