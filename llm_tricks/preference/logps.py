"""Log-probability of a response under a causal language model, the quantity every preference loss compares.

A causal LM's logits at position t are its guess for the token at position t + 1. The log-probability of a response
y given a prompt x is the sum over the response's tokens of log p(y_t | x, y_<t): take the logits one position
*before* each trained token, normalise them over the vocabulary (log-softmax), and read the entry of the token that
actually came next.

Two mistakes hide easily here, because they still give a number of the right shape:
- forgetting the shift (reading logits[t] for labels[t]) scores each token by the guess *made at that token*;
- gathering along the wrong dimension (the sequence instead of the vocabulary) reads unrelated entries.
tests/test_preference_losses.py shows both give different numbers from TRL's, so the test would catch them.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100

# Positions scored per chunk. The log-softmax normaliser (logsumexp over the vocabulary) is computed chunk by chunk
# on the trained positions only, so a low-precision (bf16) logits tensor is never copied whole to fp32.
CHUNK_POSITIONS = 1024


def per_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every trained token, and the mask of trained tokens, both (batch, seq_len - 1).

    logits (batch, seq_len, vocab) and labels (batch, seq_len): labels are the input ids with -100 where nothing is
    trained; logits[:, t] predicts labels[:, t + 1]. Untrained positions get 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must agree on (batch, seq)")
    next_logits = logits[:, :-1]          # the guess made at position t ...
    next_labels = labels[:, 1:]           # ... is scored against the token at t + 1
    trained = next_labels != IGNORE_INDEX
    token_logps = logps_of_targets(next_logits[trained], next_labels[trained])  # only the positions that count
    # Scatter back to (batch, seq_len - 1); masked_scatter keeps the graph even when nothing is trained.
    full = torch.zeros(trained.shape, dtype=token_logps.dtype, device=logits.device)
    return full.masked_scatter(trained, token_logps), trained


def logps_of_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] for rows of logits (n, vocab) and their targets (n,), in fp32 or wider.

    log softmax(z)[y] = z[y] − logsumexp(z): only the normaliser needs the whole row, so no (n, vocab) table of
    log-probabilities is built, and the fp32 copy of a bf16 row block exists for one chunk at a time.
    """
    work_dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
    pieces = []
    for start in range(0, targets.numel(), CHUNK_POSITIONS):
        chunk = logits[start:start + CHUNK_POSITIONS].to(work_dtype)
        label_logit = chunk.gather(-1, targets[start:start + CHUNK_POSITIONS, None]).squeeze(-1)
        pieces.append(label_logit - torch.logsumexp(chunk, dim=-1))
    return torch.cat(pieces) if pieces else logits.new_zeros(0, dtype=work_dtype)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of the trained tokens' log-probabilities, and how many tokens were trained, both (batch,).

    Divide the first by the second for the per-token mean that SimPO, ORPO and IPO use.
    """
    token_logps, trained = per_token_logps(logits, labels)
    return token_logps.sum(-1), trained.sum(-1)
