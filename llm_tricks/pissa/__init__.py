"""PiSSA initialisation from scratch."""

from llm_tricks.pissa.pissa import apply_pissa, pissa_init_

__all__ = ["apply_pissa", "pissa_init_"]
