"""SimPO, Simple Preference Optimization (Meng et al. 2024, arXiv:2405.14734): DPO without a reference model.

The reward is the *average* log-probability per token, scaled: r(y) = β · (1/|y|) · log π(y|x). Averaging removes
DPO's pull toward long answers (a sum of log-probs grows with length); no reference model means one forward pass
per answer. A target margin γ asks the chosen to win by at least γ:

    loss = −log σ(β · (mean_logp(y_w) − mean_logp(y_l)) − γ)  = −log σ(β · (mean_w − mean_l − γ/β))

The paper tunes γ/β (`gamma_beta_ratio`, 0.5 by default) rather than γ; β is large (2–2.5) because per-token
means differ by little. label_smoothing ε gives the conservative form −(1−ε)·log σ(z) − ε·log σ(−z).
Pass per-token *mean* log-probs (sequence_logps' sum divided by its count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float = 2.0,
               gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the rewards β·mean_logp (detached), each (n_pairs,)."""
    z = beta * (chosen_logps - rejected_logps - gamma_beta_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()
