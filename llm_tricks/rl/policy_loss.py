"""The clipped policy-gradient loss of GRPO and its variants (Dr. GRPO, DAPO), with an optional k3 KL penalty.

For each completion token t of sequence i, with A the advantage (one number per sequence, or per token):

    ratio_t  = π(y_t) / π_old(y_t) = exp(log π − log π_old)      the policy that sampled the completions is π_old
    loss_t   = −min(ratio_t · A, clip(ratio_t, 1 − ε_low, 1 + ε_high) · A)                                  (PPO)
             + β · KL_t,     KL_t = exp(ref − log π) − (ref − log π) − 1                  (k3, Schulman 2020)

The clip removes the incentive to move a token's probability further than a factor 1 ± ε from π_old in the
direction the advantage favours: where the clipped term wins the min, the gradient is 0. With one optimisation
step per batch of completions (π_old = π, "on-policy"), ratio = 1 exactly and the loss is −A per token, whose
gradient is the plain policy gradient −A · ∇log π. DAPO (Yu et al. 2025, arXiv:2503.14476) clips higher
(ε_high = 0.28 > ε_low = 0.2) so unlikely tokens can grow, which keeps the policy exploring.

k3 is an unbiased, always ≥ 0 estimate of KL(π‖π_ref) from the sampled tokens (x = ref − log π, KL ≈ eˣ − x − 1).

How the per-token losses become one number (`loss_type`) is where the variants differ; with mask m:

    grpo    : mean over sequences of (Σ_t m·loss / Σ_t m)    every sequence weighs the same, whatever its length,
                                                             so a token of a long answer counts less (length bias)
    bnpo    : Σ m·loss / Σ m                                 every token in the batch weighs the same
    dapo    : Σ m·loss / Σ m                                 the same in one process (TRL divides by the tokens of
                                                             the whole generation batch, across processes)
    dr_grpo : Σ m·loss / (B · max_completion_length)         a constant normaliser: no length bias at all
                                                             (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783)

`kl_ratio_weighted` (in `policy_loss_with_metrics`) multiplies each KL_t by ratio_t before adding it, which makes
the KL gradient an unbiased gradient of KL(π‖π_ref) (DeepSeek-V3.2, arXiv:2512.02556). TRL 1.16 does this by
default (`use_bias_correction_kl=True`); the ratio is 1 on-policy but its gradient is not 0, so this changes the
gradient whenever β ≠ 0. `policy_loss` adds the plain k3 term, as the GRPO paper writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POLICY_LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


@dataclass
class PolicyLossOutput:
    """The loss and what is worth logging next to it; everything but `loss` is detached."""

    loss: torch.Tensor               # scalar, the one to call .backward() on
    clip_ratio_low: torch.Tensor     # share of tokens with A < 0 and ratio < 1 − ε_low (clipped below: no gradient)
    clip_ratio_high: torch.Tensor    # share of tokens with A > 0 and ratio > 1 + ε_high (clipped above)
    clip_ratio_region: torch.Tensor  # share of tokens clipped either way
    kl: torch.Tensor | None          # mean KL term per token, None when beta == 0


def _masked_share(flags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((flags * mask).sum() / mask.sum().clamp(min=1.0)).detach()


def policy_loss_with_metrics(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor,
                             mask: torch.Tensor, loss_type: str = "dapo", epsilon_low: float = 0.2,
                             epsilon_high: float = 0.2, ref_logps: torch.Tensor | None = None, beta: float = 0.0,
                             max_completion_length: int | None = None, *, kl_ratio_weighted: bool = False
                             ) -> PolicyLossOutput:
    """The clipped policy loss (scalar) with clip ratios and mean KL for logging."""
    if loss_type not in POLICY_LOSS_TYPES:
        raise ValueError(f"unknown policy loss_type {loss_type!r}; choose one of {', '.join(POLICY_LOSS_TYPES)}")
    if logps.dim() != 2 or mask.shape != logps.shape:
        raise ValueError(f"logps and mask must both be (batch, completion_length), got {tuple(logps.shape)} and "
                         f"{tuple(mask.shape)}")
    for name, other in (("old_logps", old_logps), ("ref_logps", ref_logps)):
        if other is not None and other.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(other.shape)}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]    # one advantage per sequence, shared by all its tokens
    if advantages.shape not in ((logps.shape[0], 1), logps.shape):
        raise ValueError(f"advantages must be (batch,) or (batch, completion_length) = {tuple(logps.shape)}, "
                         f"got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"beta={beta} adds a KL penalty to the reference model: pass ref_logps (or set beta=0)")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' divides by batch × max_completion_length: pass max_completion_length")

    mask = mask.to(logps.dtype)
    if old_logps is None:                  # on-policy: the completions were sampled by this very policy
        old_logps = logps.detach()
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)

    kl = None
    if beta != 0.0:
        log_ratio_to_ref = ref_logps - logps
        kl = torch.exp(log_ratio_to_ref) - log_ratio_to_ref - 1
        if kl_ratio_weighted:
            kl = kl * ratio
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:  # dr_grpo
        loss = (per_token * mask).sum() / (logps.shape[0] * max_completion_length)

    with torch.no_grad():
        clipped_low = (ratio < 1 - epsilon_low) & (advantages < 0)
        clipped_high = (ratio > 1 + epsilon_high) & (advantages > 0)
        return PolicyLossOutput(loss=loss, clip_ratio_low=_masked_share(clipped_low, mask),
                                clip_ratio_high=_masked_share(clipped_high, mask),
                                clip_ratio_region=_masked_share(clipped_low | clipped_high, mask),
                                kl=None if kl is None else _masked_share(kl, mask))


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
                loss_type: str = "dapo", epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                ref_logps: torch.Tensor | None = None, beta: float = 0.0,
                max_completion_length: int | None = None) -> torch.Tensor:
    """The clipped policy-gradient loss of GRPO / Dr. GRPO / DAPO, plus β × k3 KL, as one scalar."""
    return policy_loss_with_metrics(logps, old_logps, advantages, mask, loss_type, epsilon_low, epsilon_high,
                                    ref_logps, beta, max_completion_length).loss
