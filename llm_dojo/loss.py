"""Causal-LM loss computed only where it is trained, normalised over the whole gradient-accumulation window.

A chat batch trains a minority of its positions (the assistant answers), yet the usual forward computes
`tokens × vocab` logits (49,152 columns for SmolLM2) for all of them. We instead ask the model for the logits of
just the positions whose *next* token is trained: transformers' `logits_to_keep` accepts a boolean
(batch, seq) mask and returns logits of shape (num_trained, vocab). The result equals the plain loss.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from llm_dojo.data.encode import IGNORE_INDEX


# Batch entries that are not model inputs: the labels, and the counts CountingCollator adds (recipes/trainer.py).
COUNT_KEYS = ("num_real_tokens", "num_samples", "row_lengths")
NOT_MODEL_INPUTS = ("labels",) + COUNT_KEYS


def positions_to_keep(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of positions whose logits predict a trained token (label shifted by one)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def trained_positions_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: Optional[torch.Tensor | int] = None,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over trained tokens divided by `num_items_in_batch` (or by their count here).

    Returns (loss, number of trained tokens in this micro-batch).
    """
    labels = inputs["labels"]
    keep = positions_to_keep(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
    outputs = model(**model_inputs, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits.float()  # (num_trained, vocab): fp32 for a stable log-softmax under bf16
    total = F.cross_entropy(logits, targets, reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else max(1, targets.numel())
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device)
    return total / denominator, targets.numel()


def full_logits_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference: logits at every position, shifted labels, mean over trained tokens (for tests)."""
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, use_cache=False).logits.float()
    labels = inputs["labels"]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
