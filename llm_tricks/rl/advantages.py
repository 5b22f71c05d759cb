"""Group-relative advantages: how good was each completion compared with its siblings for the same prompt?

Online RL for LLMs samples a *group* of G completions per prompt, scores each with a reward, and uses the other
completions of the group as the baseline, so no value network is needed. Rewards arrive group by group:
completions 0..G−1 belong to prompt 0, G..2G−1 to prompt 1, and so on.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300):

    A_i = (r_i − mean(group of i)) / (std + 1e-4)

`scale` picks the std: "group" = the std of i's group (GRPO), "batch" = the std of all N rewards (fewer extreme
values when a group's rewards barely differ), "none" = no division (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783,
which argues the division up-weights prompts that are too easy or too hard). The std is Bessel-corrected
(divides by n − 1, `torch.std`'s default). 1e-4 keeps a group of equal rewards at 0 / 1e-4 = 0.

RLOO, REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv:2402.14740): the baseline of completion i is the mean of
the *other* G − 1 rewards of its group, so it does not depend on r_i itself (an unbiased baseline):

    A_i = r_i − (Σ_group r − r_i) / (G − 1) = G / (G − 1) · (r_i − mean(group of i))

In both, the advantages of a group sum to zero, and a group whose rewards are all equal gets A = 0 everywhere:
it carries no learning signal.
"""

from __future__ import annotations

import torch

SCALE_REWARDS = ("group", "batch", "none")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards as (n_groups, group_size), with a clear error when they do not split into whole groups."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per completion), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a completion alone has no siblings to compare with, so its "
                         f"advantage is always 0), got {group_size}")
    if len(rewards) % group_size != 0:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}: lay them out group by "
                         f"group, group_size completions per prompt")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages (N,): each reward minus its group's mean, divided by a std chosen by `scale`."""
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True)   # one per group, shared by its completions
    elif scale == "batch":
        std = rewards.std()
    elif scale == "none":
        return centred.view(-1)
    else:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALE_REWARDS)}")
    return (centred / (std + 1e-4)).view(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int, normalize: bool = False) -> torch.Tensor:
    """RLOO advantages (N,): each reward minus the mean of the other rewards of its group."""
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    advantages = (grouped - others_mean).view(-1)
    if normalize:   # optional: mean 0, std 1 over the whole batch (TRL's `normalize_advantages`, off by default)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return advantages
