"""LLM-Dojo: fine-tune open chat models with LoRA, QLoRA, DoRA or full fine-tuning — and learn how it works."""

__version__ = "0.1.0"
