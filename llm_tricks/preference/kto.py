"""KTO, Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306): preference from thumbs up/down.

KTO needs no pairs: each example is one answer labelled desirable or undesirable. Its value of an answer is measured
against a reference point z, an estimate of how far the policy has drifted from the reference in general:

    r(y)  = log π(y|x) − log π_ref(y|x)
    z     = max(0, mean over mismatched (x, y') of [log π(y'|x') − log π_ref(y'|x')])   (detached)
    loss  = λ_D · (1 − σ(β·(r(y) − z)))   for a desirable y
            λ_U · (1 − σ(β·(z − r(y))))   for an undesirable y

The mismatched pairs (each prompt with another example's answer, `kl_logps` / `ref_kl_logps`) estimate the KL
divergence KL(π‖π_ref) ≥ 0, hence the clamp at 0; z is not trained through (it is a baseline, not a target).
λ_D, λ_U (desirable_weight, undesirable_weight) balance unequal numbers of good and bad examples: the paper suggests
λ_D·n_D / (λ_U·n_U) in [1, 4/3].

Returns the losses of the desirable examples followed by those of the undesirable ones, the rewards β·r (detached)
of each group, and z.
"""

from __future__ import annotations

import torch


def kto_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, kl_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses (n_desirable + n_undesirable,), chosen_rewards, rejected_rewards, kl baseline z (scalar))."""
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses])
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(), kl
