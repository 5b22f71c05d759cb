"""Exact parameter counts for `dojo estimate`: the model is built on the meta device from its config, never loaded.

Building on the meta device allocates no weights, so a 70B model's config is counted in seconds with no memory.
The counts that matter for training memory: every weight (shared tensors once), the linear layers a 4-bit load
quantises, and the low-rank matrices LoRA adds to its target layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import nn

from llm_dojo.models.embedded import CACHE_VERSION, EMBEDDED_ALIAS, cache_root, gguf_path

# bitsandbytes NF4 with double quantisation (as bnb_4bit_config in models/loading.py): 4 bits per weight, one 8-bit
# absmax per block of 64 weights, and one fp32 absmax per 256 of those blocks for the second quantisation.
NF4_BLOCK, NF4_SECOND_BLOCK = 64, 256
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_SECOND_BLOCK)


@dataclass(frozen=True)
class ParameterCounts:
    """What one model holds, counted exactly from its modules."""

    total: int  # every parameter, tied (shared) tensors once
    quantizable: int  # weights of the nn.Linear layers a 4-bit load turns into NF4 (all but the output head)
    lora: int  # A and B matrices (and DoRA magnitudes) added to the target layers
    lora_inputs_per_token: int  # sum of the target layers' input widths: what LoRA's dropout copies per token
    targets: tuple[str, ...]  # LoRA target names, as PEFT matches them (last name component)


def model_config(model_name_or_path: str, trust_remote_code: bool = False):
    """The model's transformers config: a hub id or folder as `from_pretrained` reads it; the embedded alias from
    its converted cache folder, else from the GGUF file's metadata (no weights are read either way)."""
    from transformers import AutoConfig

    if model_name_or_path.strip().lower() == EMBEDDED_ALIAS:
        converted = cache_root() / f"{EMBEDDED_ALIAS}-{CACHE_VERSION}"  # as embedded_model_path writes it
        if (converted / "config.json").is_file():
            return AutoConfig.from_pretrained(converted)
        gguf = gguf_path()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)


def meta_model(config, trust_remote_code: bool = False) -> nn.Module:
    """The model with every tensor on the meta device (shapes only), its input and output embeddings tied as a
    real load ties them (`from_config` alone leaves them separate)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model


def count_parameters(model: nn.Module, lora_targets: str, lora_rank: int, use_dora: bool = False) -> ParameterCounts:
    """Exact counts for a (meta) model and a LoRA target spec ('all-linear' or a comma-separated list)."""
    from llm_dojo.models.adapters import target_modules

    targets = tuple(target_modules(model, lora_targets))
    output_head = model.get_output_embeddings()
    quantizable = lora = lora_inputs = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output_head:
            continue
        quantizable += module.weight.numel()
        if name.rsplit(".", 1)[-1] in targets:
            # A is (r × in), B is (out × r); DoRA adds one magnitude per output feature.
            lora += lora_rank * (module.in_features + module.out_features) + (module.out_features if use_dora else 0)
            lora_inputs += module.in_features
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    return ParameterCounts(total, quantizable, lora, lora_inputs, targets)
