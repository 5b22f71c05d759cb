"""PiSSA: principal singular values and singular vectors adaptation (Meng, Wang & Zhang, arXiv:2404.02948).

Plain LoRA starts from B = 0: the adapter begins as nothing and the frozen weight holds everything. PiSSA
instead hands the adapter the most important part of W0 and freezes the rest. With the SVD W0 = U·S·Vᵀ:

    principal part   W_pri = U_r · S_r · V_rᵀ            (top-r singular values and vectors)
    residual         W_res = W0 − W_pri                   (frozen, stays in the base layer)
    adapter          B = U_r · sqrt(S_r / s),  A = sqrt(S_r / s) · V_rᵀ,   so that s·B·A = W_pri

Dividing S_r by the LoRA scaling s (alpha / r, or alpha / sqrt(r) with rsLoRA) is PEFT's convention: the layer
still computes W_res·x + s·B·A·x = W0·x, so the model's output is unchanged at step 0, but training now
updates the principal directions directly, which the paper finds converges faster than LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_tricks.lora.lora import LoRALinear


@torch.no_grad()
def pissa_init_(layer: LoRALinear) -> None:
    """Re-initialise one LoRALinear in place: A, B from the top-r SVD of W0, the residual W0 − s·B·A in the base."""
    if layer.merged:
        raise ValueError("PiSSA must be applied to an unmerged layer (call unmerge() first)")
    weight = layer.base.weight
    dtype = weight.dtype
    # Exact SVD in float32 (PEFT's init_lora_weights="pissa"; the fast "pissa_niter_k" variant is randomised).
    U, S, Vh = torch.linalg.svd(weight.to(torch.float32), full_matrices=False)
    r = layer.r
    sqrt_s = torch.sqrt(S[:r] / layer.scaling)
    lora_A = torch.diag(sqrt_s) @ Vh[:r]          # (r, in)
    lora_B = U[:, :r] @ torch.diag(sqrt_s)        # (out, r)
    layer.lora_A.data = lora_A.to(dtype)
    layer.lora_B.data = lora_B.to(dtype)
    residual = weight.to(torch.float32) - layer.scaling * (lora_B @ lora_A)
    layer.base.weight.data = residual.to(dtype)


def apply_pissa(model: nn.Module) -> list[str]:
    """Apply `pissa_init_` to every LoRALinear in the model; returns their names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            pissa_init_(module)
            names.append(name)
    if not names:
        raise ValueError("no LoRALinear layers found: call llm_tricks.inject.inject_adapters(model, ...) first")
    return names
