"""NEFTune: noisy embeddings improve instruction fine-tuning (Jain et al., arXiv:2310.05914).

During training only, add uniform noise to the input embeddings:

    e' = e + (alpha / sqrt(L·d)) · ε,      ε ~ Uniform(-1, 1) elementwise

d is the embedding width and L the sequence length, so the expected noise norm per sequence stays about the
same whatever L is. Here L is each *sample's* true length: in a right-padded batch a short sample does not get
the weaker noise of the longest one, and in a packed row (several samples back to back, positions restarting
at 0) every sample gets its own L. transformers' built-in hook uses the padded/packed row length instead.

How the lengths reach the hook
------------------------------
`attach_neftune(model, alpha)` registers two hooks and returns one handle:

1. a forward *pre*-hook on the model that reads the call's `position_ids` and `attention_mask` (whatever the
   caller passes — the same tensors the model itself uses to separate samples) and stores them on the handle;
2. a forward hook on the input embedding module that turns them into one length per token
   (`per_token_sample_lengths`) and adds the scaled noise; a pad token (attention_mask 0) gets no noise.

What decides L, in order: `position_ids` (a new sample starts wherever the position is 0; padded-free
packing as in TRL), then a 2-D 0/1 `attention_mask` (L = number of real tokens in the row), else the row
length. Noise is added only while the embedding module is in training mode; `model.eval()` turns it off.
`handle.remove()` detaches both hooks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def per_token_sample_lengths(
    shape: tuple[int, int],
    position_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """For a (batch, seq) batch, the true length of the sample each token belongs to (0 for padding)."""
    batch, seq = shape
    for name, tensor in (("position_ids", position_ids), ("attention_mask", attention_mask)):
        if tensor is not None and tensor.dim() == 2 and tensor.shape[-1] != seq:
            raise ValueError(f"NEFTune: {name} has {tensor.shape[-1]} positions but the embeddings have {seq}")
    real = torch.ones(batch, seq, dtype=torch.long)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = (attention_mask.to("cpu") != 0).long()
    if position_ids is None:
        # One sample per row: its length is the number of real tokens in the row.
        return real.sum(dim=1, keepdim=True).expand(batch, seq) * real
    pos = position_ids.to("cpu").expand(batch, seq)
    # Sample k of a row covers the tokens after its k-th position 0; cumsum numbers the samples 1, 2, 3, ...
    sample_id = (pos == 0).long().cumsum(dim=1)
    n_ids = int(sample_id.max()) + 1
    counts = torch.zeros(batch, n_ids, dtype=torch.long).scatter_add_(1, sample_id, real)
    return counts.gather(1, sample_id) * real


def neftune_noise(embeddings: torch.Tensor, noise_alpha: float, lengths: torch.Tensor,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform(-1, 1) noise scaled by alpha / sqrt(L·d) per token, where `lengths` (batch, seq) holds each L."""
    d = embeddings.shape[-1]
    lengths = lengths.to(embeddings.device)
    scale = noise_alpha / torch.sqrt(lengths.clamp(min=1).to(torch.float32) * d)
    scale = torch.where(lengths > 0, scale, torch.zeros_like(scale))  # padding: no noise
    eps = torch.empty_like(embeddings).uniform_(-1.0, 1.0, generator=generator)
    return eps * scale.unsqueeze(-1).to(embeddings.dtype)


@dataclass
class NEFTuneHandle:
    """Both hooks of one `attach_neftune` call, plus the tensors captured from the current forward call."""

    noise_alpha: float
    hooks: list[RemovableHandle] = field(default_factory=list)
    position_ids: Optional[torch.Tensor] = None
    attention_mask: Optional[torch.Tensor] = None

    def remove(self) -> None:
        """Detach NEFTune from the model."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self.position_ids = self.attention_mask = None


def attach_neftune(model: nn.Module, noise_alpha: float) -> NEFTuneHandle:
    """Add NEFTune noise to `model`'s input embeddings while training; returns a handle with `.remove()`."""
    if noise_alpha <= 0:
        raise ValueError(f"noise_alpha must be > 0 (the paper uses 5, 10 or 15), got {noise_alpha}")
    embeddings = model.get_input_embeddings()
    signature = inspect.signature(model.forward)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    handle = NEFTuneHandle(noise_alpha)

    def capture_call(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        extra = bound.get(var_keyword, {}) if var_keyword else {}  # wrappers such as PeftModel take these through **kwargs
        handle.position_ids = bound.get("position_ids", extra.get("position_ids"))
        handle.attention_mask = bound.get("attention_mask", extra.get("attention_mask"))

    def forget_call(module: nn.Module, args: tuple, output: Any) -> None:
        handle.position_ids = handle.attention_mask = None  # never reuse one call's lengths for the next

    def add_noise(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        lengths = per_token_sample_lengths(tuple(output.shape[:2]), handle.position_ids, handle.attention_mask)
        return output + neftune_noise(output, handle.noise_alpha, lengths)

    handle.hooks.append(model.register_forward_pre_hook(capture_call, with_kwargs=True))
    handle.hooks.append(model.register_forward_hook(forget_call))
    handle.hooks.append(embeddings.register_forward_hook(add_noise))
    return handle
