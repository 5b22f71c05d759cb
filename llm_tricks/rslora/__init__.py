"""rsLoRA is LoRA with the scaling alpha / sqrt(r): `LoRALinear(..., use_rslora=True)` (see README.md)."""

from llm_tricks.lora.lora import LoRALinear, lora_scaling

__all__ = ["LoRALinear", "lora_scaling"]
