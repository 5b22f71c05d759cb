"""The generalised Jensen-Shannon divergence of GKD, Generalized Knowledge Distillation (Agarwal et al. 2023,
arXiv:2306.13649): a token-level distillation loss between a student's and a teacher's next-token distributions.

With p_T = softmax(teacher_logits / τ), p_S = softmax(student_logits / τ) at each position, and β in [0, 1]:

    β = 0     : KL(p_T ‖ p_S)      forward KL: the student must cover every token the teacher likes (mean-seeking)
    β = 1     : KL(p_S ‖ p_T)      reverse KL: the student may pick one of the teacher's modes (mode-seeking)
    otherwise : M = β·p_T + (1 − β)·p_S
                JSD(β) = β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M)

M is built in log space, log M = logsumexp(log β + log p_T, log(1 − β) + log p_S), so no probability underflows.
The two ends are special cases, not limits: the mixture formula itself goes to 0 as β → 0 or β → 1 (M becomes
one of the two distributions), so JSD(0.01) is tiny while JSD(0) is a full KL.

Positions whose label is −100 (prompt, padding) are left out. `reduction="batchmean"` sums the divergence over the
kept positions and divides by their number when labels are given, by the batch size when they are not (a sum over
the sequence, averaged over sequences). τ does not rescale the loss by τ² (Hinton et al. 2015 do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GKD_REDUCTIONS = ("batchmean", "sum", "none")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) at each position, summed over the vocabulary: Σ p · (log p − log q)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         labels: torch.Tensor | None = None, beta: float = 0.5, temperature: float = 1.0,
                         reduction: str = "batchmean") -> torch.Tensor:
    """GKD's generalised JSD between student and teacher next-token distributions (scalar, or (batch, seq))."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape (batch, seq, vocab), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {beta}")
    if reduction not in GKD_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(GKD_REDUCTIONS)}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)

    if beta == 0.0:
        divergence = _kl(log_p_teacher, log_p_student)
    elif beta == 1.0:
        divergence = _kl(log_p_student, log_p_teacher)
    else:
        log_mixture = torch.logsumexp(torch.stack([log_p_teacher + math.log(beta),
                                                   log_p_student + math.log(1 - beta)]), dim=0)
        divergence = beta * _kl(log_p_teacher, log_mixture) + (1 - beta) * _kl(log_p_student, log_mixture)

    if labels is not None:
        if labels.shape != divergence.shape:
            raise ValueError(f"labels must be (batch, seq) = {tuple(divergence.shape)}, got {tuple(labels.shape)}")
        kept = labels != -100
        divergence = divergence * kept
    if reduction == "none":
        return divergence                      # (batch, seq), 0 at masked positions
    if reduction == "sum":
        return divergence.sum()
    denominator = kept.sum().clamp(min=1) if labels is not None else max(divergence.shape[0], 1)
    return divergence.sum() / denominator
