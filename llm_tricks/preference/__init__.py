"""Preference optimisation losses from scratch: DPO (and variants), SimPO, ORPO, KTO, and the log-probs they use."""

from llm_tricks.preference.dpo import DPO_LOSS_TYPES, dpo_loss
from llm_tricks.preference.kto import kto_loss
from llm_tricks.preference.logps import logps_of_targets, per_token_logps, sequence_logps
from llm_tricks.preference.orpo import orpo_loss
from llm_tricks.preference.simpo import simpo_loss

__all__ = ["DPO_LOSS_TYPES", "dpo_loss", "kto_loss", "logps_of_targets", "orpo_loss", "per_token_logps", "sequence_logps",
           "simpo_loss"]
