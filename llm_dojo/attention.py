"""Per-sample attention for packed rows: each sample attends only to itself, computed on its own.

With packing, a row holds several samples whose `position_ids` restart at 0. transformers' SDPA path keeps them
apart with a full (row × row) block-diagonal mask, and the CPU kernel computes every masked block anyway: a
1,024-token row of ten 100-token samples pays for 1,024² scores instead of 10 × 100². Registered as the
attention implementation "dojo_packed", this function splits each row at its samples and runs causal attention
on each alone — the cost of the samples, not of the row.

Exact for every architecture in the tests: sliding windows (Mistral, Qwen2, Gemma-2's local layers) and
attention-logit soft-capping (Gemma-2) are applied per sample; plain causal samples go through
`scaled_dot_product_attention(is_causal=True)`, the others through the same formula written out. Padding at the
end of a row (our collators pad there) is a separate segment that no real token attends to.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

ATTENTION_NAME = "dojo_packed"


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each sample in one row: a new sample starts wherever the position restarts at 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [position_ids.numel()]
    return list(zip(starts, ends))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, sliding_window: Optional[int],
            softcap: Optional[float], dropout: float) -> torch.Tensor:
    """Causal attention of one sample; q, k, v: (heads, length, head_dim)."""
    length = q.shape[1]
    if softcap is None and (sliding_window is None or sliding_window >= length):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    rows = torch.arange(length, device=q.device)[:, None]
    cols = torch.arange(length, device=q.device)[None, :]
    allowed = cols <= rows
    if sliding_window is not None:
        allowed &= rows - cols < sliding_window  # transformers' window: the last `sliding_window` positions
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, v)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                     sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                     position_ids: Optional[torch.Tensor] = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature: (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    batch, heads, length, head_dim = query.shape
    if key.shape[1] != heads:  # grouped-query attention: each key/value head serves several query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    scaling = head_dim ** -0.5 if scaling is None else scaling
    if position_ids is None:
        position_ids = torch.arange(length, device=query.device)[None].expand(batch, length)
    output = torch.empty_like(query)
    for row in range(batch):
        for start, end in segments(position_ids[row] if position_ids.shape[0] > 1 else position_ids[0]):
            output[row, :, start:end] = _attend(query[row, :, start:end], key[row, :, start:end],
                                                value[row, :, start:end], scaling, sliding_window, softcap, dropout)
    return output.transpose(1, 2).contiguous(), None


def no_mask(*args, **kwargs) -> None:
    """The mask function registered with packed_attention: it needs no mask, so none is built."""
    return None


def register() -> str:
    """Make `attn_implementation="dojo_packed"` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, no_mask)
    return ATTENTION_NAME
