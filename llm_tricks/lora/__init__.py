"""LoRA and rsLoRA from scratch."""

from llm_tricks.lora.lora import LoRALinear, lora_scaling

__all__ = ["LoRALinear", "lora_scaling"]
