"""ORPO, Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691): SFT and preference in one loss.

ORPO needs no reference model and no SFT stage before it. It trains the chosen answer with the usual NLL and adds a
penalty on the odds ratio between chosen and rejected, where odds(y) = p / (1 − p) with p = the per-token mean
probability exp(mean_logp(y)):

    log odds(y)   = mean_logp(y) − log(1 − exp(mean_logp(y)))
    L_OR          = −log σ(log odds(y_w) − log odds(y_l))
    loss          = NLL(y_w) + β · L_OR        (β = λ in the paper, 0.1 by default)

`orpo_loss` returns β · L_OR per pair; the trainer adds the chosen answers' NLL. log(1 − eˣ) is computed stably:
log(−expm1(x)) near 0, log1p(−eˣ) further away (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").
Rewards for logging are β · mean_logp, detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0 without cancellation."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair β·(−log σ(log odds ratio)) and the rewards β·mean_logp (detached), each (n_pairs,).

    chosen_logps / rejected_logps are per-token mean log-probs (so each is < 0)."""
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()
