"""Reward functions for stage: grpo: the built-ins (builtin.py) and resolving `reward_funcs` into a weighted set
(registry.py). A reward function is a plain callable `fn(completions, prompts=None, **columns) -> list[float | None]`,
TRL's signature, so TRL's own reward functions and yours work here unchanged."""

from llm_dojo.rewards.builtin import (RewardError, completion_text, format_reward, math_answer, soft_overlong_penalty,
                                      think_format)
from llm_dojo.rewards.registry import BUILTINS, RewardSet, resolve_reward

__all__ = ["BUILTINS", "RewardError", "RewardSet", "completion_text", "format_reward", "math_answer", "resolve_reward",
           "soft_overlong_penalty", "think_format"]
