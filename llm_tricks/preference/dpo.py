"""DPO, Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290), and variants on the same margin.

The policy π is trained so that it prefers the chosen answer y_w over the rejected y_l *more than the reference
model π_ref did*. With the implicit reward r(y) = β · (log π(y|x) − log π_ref(y|x)), the Bradley-Terry likelihood
of the preference gives

    loss = −log σ(r(y_w) − r(y_l)) = −log σ(β · [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])

β sets how far from the reference the policy may move (small β: the margin must grow a lot before the loss flattens).
At the start π = π_ref, every log-ratio is 0 and the loss is log 2 ≈ 0.693 for every pair.

Variants (`loss_type`), all on h = log-ratio(chosen) − log-ratio(rejected):
- sigmoid  : −(1−ε)·log σ(βh) − ε·log σ(−βh); ε = label_smoothing, the share of pairs assumed mislabelled
             ("conservative DPO"); ε = 0 is plain DPO.
- robust   : (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1−2ε), an unbiased estimate under label noise ε
             (Chowdhury et al. 2024, arXiv:2403.00409).
- hinge    : max(0, 1 − βh), the SLiC margin loss (Zhao et al. 2023, arXiv:2305.10425).
- ipo      : (h − 1/(2β))², IPO (Azar et al. 2023, arXiv:2310.12036): a squared target margin instead of a
             log-sigmoid that never stops pushing. The caller passes *per-token mean* log-probs for ipo, as TRL does.
- apo_zero : 1 − σ(β·ratio_w) + σ(β·ratio_l): raise the chosen, lower the rejected, each on its own
             (APO, D'Oosterlinck et al. 2024, arXiv:2408.06266); for chosen answers better than the model's own.
- apo_down : σ(β·ratio_w) + 1 − σ(β·(ratio_w − ratio_l)): lower both, the rejected more; for chosen answers
             worse than the model's own.

Rewards, for logging only, are β · log-ratio, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "apo_zero", "apo_down")


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen / rejected rewards, each (n_pairs,)."""
    chosen_logratios = chosen_logps - ref_chosen_logps        # how much more likely than the reference finds it
    rejected_logratios = rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "apo_zero":
        losses = (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * h))
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(DPO_LOSS_TYPES)}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
