"""`dojo merge`: fold a LoRA / DoRA / QLoRA adapter into its base model and save a standalone model folder.

    dojo merge --adapter outputs/run/adapter --output outputs/run/merged [--dtype bf16]

The result loads with plain `AutoModelForCausalLM.from_pretrained(folder)`: safetensors shards, tokenizer, chat
template, and a generation_config.json whose eos_token_id lists the template's end-of-turn token(s), so a plain
`generate()` stops where the assistant's turn ends.

QLoRA: the adapter learned to correct the *4-bit* weights, so it is merged into those weights de-quantised to
`--dtype` (never re-quantised, never into the original full-precision weights, which differ from what training saw).
A QLoRA adapter is recognised by `--from-qlora`, or by the training config `dojo train` saves next to the adapter
(`dojo_config.yaml` with `train_mode: qlora`; `load_in_4bit: true` in a config file is accepted too), or by a base
model whose config.json says it is stored in 4-bit.

The folder is written next to `--output` under a temporary name and renamed at the end: a failed merge leaves no
half-written folder behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from llm_dojo.infer.common import pad_token_id, stop_token_ids
from llm_dojo.models.embedded import resolve_model_path
from llm_dojo.models.loading import load_model, load_tokenizer, parse_dtype, read_adapter_base

logger = logging.getLogger(__name__)

# Files in an adapter folder that may record how it was trained (`dojo train` writes dojo_config.yaml); any of them
# saying `train_mode: qlora` or `load_in_4bit: true` (at any depth) marks a QLoRA adapter.
QLORA_MARKER_FILES = ("dojo_config.yaml", "dojo_config.json", "training_config.json", "training_config.yaml")


def _find_key(data: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in nested dicts/lists."""
    found = []
    if isinstance(data, dict):
        for name, value in data.items():
            if name == key:
                found.append(value)
            found += _find_key(value, key)
    elif isinstance(data, list):
        for value in data:
            found += _find_key(value, key)
    return found


def _read_config_file(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def qlora_evidence(adapter_dir: str, base: str) -> Optional[str]:
    """Why this adapter looks trained on a 4-bit base (a sentence for the log), or None if nothing says so."""
    for name in QLORA_MARKER_FILES:
        path = Path(adapter_dir) / name
        if not path.is_file():
            continue
        config = _read_config_file(path)
        if "qlora" in _find_key(config, "train_mode"):
            return f"{path} says train_mode: qlora"
        if True in _find_key(config, "load_in_4bit"):
            return f"{path} says load_in_4bit: true"
    base_config = Path(resolve_model_path(base)) / "config.json"
    if base_config.is_file():
        quantization = json.loads(base_config.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quantization.get("load_in_4bit") or quantization.get("bnb_4bit_quant_type"):
            return f"the base model {base} is stored in 4-bit"
    return None


def load_base_for_merge(base: str, dtype: torch.dtype, *, qlora: bool, trust_remote_code: bool = False):
    """The base weights the adapter must be added to: as stored, or (QLoRA) the 4-bit weights de-quantised to `dtype`."""
    if not qlora:
        return load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
    # Quantise exactly as training did (NF4, double quant — load_model's recipe), then expand back to `dtype`.
    model = load_model(base, load_in_4bit=True, dtype=dtype, trust_remote_code=trust_remote_code)
    model = model.dequantize(dtype=dtype)
    return model.to(dtype)


def merged_generation_config(model, tokenizer):
    """The base's generation config with eos_token_id covering the chat template's end-of-turn token(s)."""
    config = model.generation_config
    config.eos_token_id = stop_token_ids(tokenizer, model)
    config.pad_token_id = pad_token_id(tokenizer)
    return config


def write_merged_folder(model, tokenizer, folder: Path, *, max_shard_size: str, provenance: dict[str, Any]) -> None:
    """Save weights (safetensors shards), tokenizer + chat template, generation config and where it came from."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder)
    merged_generation_config(model, tokenizer).save_pretrained(folder)
    (folder / "dojo_merge.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def merge_adapter(
    adapter: str,
    output: str,
    *,
    base: Optional[str] = None,
    dtype: Optional[str] = None,
    from_qlora: Optional[bool] = None,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    """Merge `adapter` into its base and write a standalone model to `output` (atomically); returns the folder."""
    from peft import PeftModel

    target = Path(output).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    base = base or read_adapter_base(adapter)
    evidence = "--from-qlora" if from_qlora else qlora_evidence(adapter, base)
    qlora = bool(evidence) if from_qlora is None else from_qlora
    torch_dtype = _merge_dtype(dtype, base)
    logger.info("merging %s into %s (%s, %s)", adapter, base, str(torch_dtype).removeprefix("torch."),
                f"QLoRA: de-quantised 4-bit base, because {evidence}" if qlora else "full-precision base")

    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
    model = load_base_for_merge(base, torch_dtype, qlora=qlora, trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # training added tokens; the adapter saved the larger matrices
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        provenance = {"adapter": str(adapter), "base": base, "dtype": str(torch_dtype).removeprefix("torch."),
                      "qlora": qlora, "qlora_evidence": evidence}
        write_merged_folder(model, tokenizer, scratch, max_shard_size=max_shard_size, provenance=provenance)
        if target.exists():  # --overwrite: move the old folder aside first so the swap is two renames
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(scratch, target)
            shutil.rmtree(old)
        else:
            os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info("merged model written to %s", target)
    return target


def _merge_dtype(name: Optional[str], base: str) -> torch.dtype:
    """--dtype if given, else the dtype the base checkpoint is stored in (fp32 if it does not say)."""
    if name not in (None, "", "auto"):
        return parse_dtype(name)
    config_path = Path(resolve_model_path(base)) / "config.json"
    stored = None
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
    return getattr(torch, stored) if isinstance(stored, str) and hasattr(torch, stored) else torch.float32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dojo merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="adapter folder written by `dojo train`")
    parser.add_argument("--output", required=True, help="folder to create for the merged model")
    parser.add_argument("--model", help="base model (default: base_model_name_or_path of adapter_config.json)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32", "auto"], default="auto",
                        help="dtype of the merged weights (default: the dtype the base checkpoint is stored in)")
    parser.add_argument("--from-qlora", action="store_true", default=None,
                        help="the adapter was trained on a 4-bit base (normally detected automatically)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard, e.g. 500MB, 5GB")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `dojo merge`."""
    args = build_parser().parse_args(argv)
    try:
        merge_adapter(args.adapter, args.output, base=args.model, dtype=args.dtype, from_qlora=args.from_qlora,
                      max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                      trust_remote_code=args.trust_remote_code)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"dojo merge: error: {error}", file=sys.stderr)
        return 2
    return 0
