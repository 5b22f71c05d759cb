"""Load models and tokenizers: a hub id, a local folder, or the embedded alias; optional 4-bit and adapters."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from llm_dojo.models.embedded import resolve_model_path

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def default_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it, else fp32 (CPUs train far slower and less stably in half precision)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def parse_dtype(name: Optional[str]) -> torch.dtype:
    """Turn 'bf16' / 'fp16' / 'fp32' (or 'auto'/None) into a torch dtype."""
    if name in (None, "", "auto"):
        return default_dtype()
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; accepted: auto, {', '.join(sorted(DTYPES))}") from None


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False):
    """Load the tokenizer; make sure it has a pad token (needed to batch) without touching eos."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding positions never carry labels (labels come from the turn structure), so reusing eos as pad is
        # safe here — but only because nothing in LLM-Dojo masks labels by `input_ids == pad_token_id`.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def bnb_4bit_config(compute_dtype: torch.dtype):
    """NF4 4-bit weights with double quantization: the QLoRA recipe (Dettmers et al., arXiv:2305.14314)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model(
    model_name_or_path: str,
    *,
    load_in_4bit: bool = False,
    dtype: Optional[torch.dtype] = None,
    trust_remote_code: bool = False,
    attn_implementation: Optional[str] = None,
):
    """Load a causal LM through the normal `from_pretrained` path (hub id, folder or embedded alias)."""
    from transformers import AutoModelForCausalLM

    dtype = dtype or default_dtype()
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(model_name_or_path), **kwargs)


def find_linear_targets(model: nn.Module) -> list[str]:
    """Names (last component) of every linear layer except the output head — the LoRA targets by default."""
    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear_types: tuple[type, ...] = (nn.Linear,)
    # 4-bit layers are not nn.Linear subclasses in every bitsandbytes version. A quantised model has already
    # imported bitsandbytes; importing it here for any other model would only print its kernel warning.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, linear_types) and module is not output_head:
            names.add(full_name.rsplit(".", 1)[-1])
    # Fused projections (Phi-3's qkv_proj / gate_up_proj) appear here by their own names, so they are covered.
    names.discard("lm_head")
    return sorted(names)


def read_adapter_base(adapter_dir: str) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --adapter must be a folder written by `dojo train`")
    return json.loads(config_path.read_text())["base_model_name_or_path"]


def tokenizer_source(model_name_or_path: str, adapter: Optional[str] = None) -> str:
    """Where to load the tokenizer from: an adapter folder that carries one (as `dojo train` writes), else the model."""
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return adapter
    return model_name_or_path


def trained_in_4bit(adapter: Optional[str]) -> Optional[str]:
    """Why an adapter looks trained on a 4-bit base (a sentence for the log), or None.

    `dojo train` writes `dojo_config.yaml` with `train_mode` next to the adapter; `load_in_4bit: true` in a
    training config (other tools) counts too.
    """
    if not adapter:
        return None
    for name in ("dojo_config.yaml", "dojo_config.json", "training_config.json", "training_config.yaml"):
        path = Path(adapter) / name
        if not path.is_file():
            continue
        import yaml  # JSON is YAML too

        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "qlora" in _values_of(config, "train_mode"):
            return f"{path} says train_mode: qlora"
        if True in _values_of(config, "load_in_4bit"):
            return f"{path} says load_in_4bit: true"
    return None


def _values_of(data, key: str) -> list:
    """Every value stored under `key` anywhere in nested dicts/lists."""
    found = []
    if isinstance(data, dict):
        for name, value in data.items():
            if name == key:
                found.append(value)
            found += _values_of(value, key)
    elif isinstance(data, list):
        for value in data:
            found += _values_of(value, key)
    return found


def load_for_inference(
    model_name_or_path: Optional[str] = None,
    adapter: Optional[str] = None,
    *,
    dtype: Optional[torch.dtype] = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """Load (model, tokenizer) for generation: a base model, optionally with a PEFT adapter on top, in eval mode."""
    if model_name_or_path is None:
        if adapter is None:
            raise ValueError("give --model, --adapter, or both")
        model_name_or_path = read_adapter_base(adapter)
    tokenizer = load_tokenizer(tokenizer_source(model_name_or_path, adapter), trust_remote_code=trust_remote_code)
    model = load_with_adapter(model_name_or_path, adapter, dtype=dtype, load_in_4bit=load_in_4bit,
                              trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_with_adapter(
    model_name_or_path: str,
    adapter: Optional[str],
    *,
    dtype: Optional[torch.dtype] = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """The base model with the PEFT adapter on top (when given), in eval mode."""
    model = load_model(model_name_or_path, load_in_4bit=load_in_4bit, dtype=dtype, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()
