"""NEFTune from scratch, with per-sample lengths (also inside packed rows)."""

from llm_tricks.neftune.neftune import NEFTuneHandle, attach_neftune, neftune_noise, per_token_sample_lengths

__all__ = ["NEFTuneHandle", "attach_neftune", "neftune_noise", "per_token_sample_lengths"]
