"""Put our from-scratch LoRA/DoRA layers into a model, merge them back out, and save them in PEFT's format.

    names = inject_adapters(model, ["q_proj", "v_proj"], r=16, lora_alpha=32)    # train ...
    save_as_peft_adapter(model, "out/adapter", "HuggingFaceTB/SmolLM2-135M-Instruct", r=16, lora_alpha=32,
                         lora_dropout=0.0, use_dora=False, use_rslora=False, target_modules=["q_proj", "v_proj"])
    merge_adapters(model).save_pretrained("out/merged")                            # or a plain merged model

The adapter folder loads with plain `peft.PeftModel.from_pretrained(base, "out/adapter")`; the merged folder
with plain `transformers.AutoModelForCausalLM.from_pretrained("out/merged")`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from llm_tricks.dora.dora import DoRALinear
from llm_tricks.lora.lora import LoRALinear

logger = logging.getLogger(__name__)

ADAPTER_TYPES = (LoRALinear, DoRALinear)
PEFT_PREFIX = "base_model.model."  # how PeftModelForCausalLM names the wrapped model's modules


def _parent_and_child(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Our LoRALinear/DoRALinear layers in the model, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)}


def inject_adapters(
    model: nn.Module,
    target_modules: list[str],
    r: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    use_rslora: bool = False,
) -> list[str]:
    """Wrap every nn.Linear whose last name component is in target_modules; freeze all else; return their names."""
    targets = set(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name the linear layers to adapt, e.g. ['q_proj', 'v_proj']")
    if adapter_layers(model):
        raise ValueError("the model already has adapter layers; merge_adapters(model) first or start from a fresh model")
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not chosen:
        linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named any of {sorted(targets)}; linear layers in this model: {linear_names}")

    for param in model.parameters():
        param.requires_grad_(False)
    layer_cls = DoRALinear if use_dora else LoRALinear
    for name, linear in chosen:
        if not linear.weight.dtype.is_floating_point:
            raise TypeError(f"{name} holds quantized weights ({type(linear).__name__}); the from-scratch layers "
                            "need float weights — use PEFT (trick_impl=peft) for 4-bit/8-bit models")
        parent, child = _parent_and_child(model, name)
        layer = layer_cls(linear, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora)
        layer.train(linear.training)  # a new module starts in training mode; keep the model's mode (eval → no dropout)
        setattr(parent, child, layer)
    names = [name for name, _ in chosen]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("%s on %d layers: %d trainable of %d parameters (%.2f%%)", "DoRA" if use_dora else "LoRA",
                len(names), trainable, total, 100 * trainable / total)
    return names


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put back a plain nn.Linear, so save_pretrained needs no PEFT."""
    for name, layer in adapter_layers(model).items():
        layer.merge()
        parent, child = _parent_and_child(model, name)
        setattr(parent, child, layer.base)
    return model


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our adapter tensors under PEFT's key names (…q_proj.lora_A.weight, …q_proj.lora_magnitude_vector)."""
    state = {}
    for name, layer in adapter_layers(model).items():
        if layer.merged:
            raise ValueError(f"{name} is merged; unmerge() it before saving it as an adapter")
        prefix = PEFT_PREFIX + name
        state[f"{prefix}.lora_A.weight"] = layer.lora_A.detach().clone().contiguous()
        state[f"{prefix}.lora_B.weight"] = layer.lora_B.detach().clone().contiguous()
        if isinstance(layer, DoRALinear):
            state[f"{prefix}.lora_magnitude_vector"] = layer.magnitude.detach().clone().contiguous()
    if not state:
        raise ValueError("the model has no adapter layers: nothing to save (did you call inject_adapters?)")
    return state


def peft_adapter_config(base_model_name_or_path: Optional[str], r: int, lora_alpha: float, lora_dropout: float,
                        use_dora: bool, use_rslora: bool, target_modules: list[str]) -> dict:
    """The adapter_config.json PEFT needs to rebuild the same layers (fields PEFT does not see take its defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": sorted(set(target_modules)),
        "use_dora": use_dora,
        "use_rslora": use_rslora,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def save_as_peft_adapter(
    model: nn.Module,
    output_dir: str,
    base_model_name_or_path: Optional[str],
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    use_dora: bool,
    use_rslora: bool,
    target_modules: list[str],
) -> None:
    """Write adapter_config.json + adapter_model.safetensors that plain `PeftModel.from_pretrained` loads."""
    from safetensors.torch import save_file

    kinds = {type(layer) for layer in adapter_layers(model).values()}
    if kinds and kinds != {DoRALinear if use_dora else LoRALinear}:
        raise ValueError(f"use_dora={use_dora} but the model holds {sorted(k.__name__ for k in kinds)} layers")
    state = peft_state_dict(model)
    config = peft_adapter_config(base_model_name_or_path, r, lora_alpha, lora_dropout, use_dora, use_rslora,
                                 target_modules)

    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write everything into a temporary folder first; a crash never leaves a half-written adapter behind.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=target.parent))
    try:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if not target.exists():
            os.replace(tmp, target)
        else:  # keep whatever else lives there (tokenizer, logs); swap our two files in one rename each
            for file in ("adapter_model.safetensors", "adapter_config.json"):
                os.replace(tmp / file, target / file)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved %d adapter tensors in PEFT format to %s", len(state), target)
