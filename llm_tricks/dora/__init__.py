"""DoRA from scratch."""

from llm_tricks.dora.dora import DoRALinear

__all__ = ["DoRALinear"]
