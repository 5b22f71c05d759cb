"""LoRA+ optimizer parameter groups from scratch."""

from llm_tricks.lora_plus.lora_plus import loraplus_param_groups, create_loraplus_optimizer

__all__ = ["loraplus_param_groups", "create_loraplus_optimizer"]
