"""Online RL and distillation losses from scratch: GRPO / RLOO advantages, the clipped policy loss of GRPO, Dr. GRPO
and DAPO with the k3 KL estimate, and GKD's generalised Jensen-Shannon divergence."""

from llm_tricks.rl.advantages import SCALE_REWARDS, group_advantages, rloo_advantages
from llm_tricks.rl.gkd import generalized_jsd_loss
from llm_tricks.rl.policy_loss import POLICY_LOSS_TYPES, PolicyLossOutput, policy_loss, policy_loss_with_metrics

__all__ = ["POLICY_LOSS_TYPES", "PolicyLossOutput", "SCALE_REWARDS", "generalized_jsd_loss", "group_advantages",
           "policy_loss", "policy_loss_with_metrics", "rloo_advantages"]
