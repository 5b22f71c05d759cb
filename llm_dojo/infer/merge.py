"""`dojo merge`: fold a LoRA / DoRA / QLoRA adapter into its base model and save a standalone model folder.

    dojo merge --adapter outputs/run --output outputs/run-merged [--dtype bf16]

The result loads with plain `AutoModelForCausalLM.from_pretrained(folder)`: safetensors shards, tokenizer, chat
template, and a generation_config.json whose eos_token_id lists the template's end-of-turn token(s), so a plain
`generate()` stops where the assistant's turn ends.

QLoRA: the adapter learned to correct the *4-bit* weights, so it is merged into those weights de-quantised to
`--dtype` (never re-quantised, never into the original full-precision weights, which differ from what training saw).
A QLoRA adapter is recognised by `--from-qlora`, or by the training config `dojo train` saves next to the adapter
(`dojo_config.yaml` with `train_mode: qlora`; `load_in_4bit: true` in a config file is accepted too), or by a base
model whose config.json says it is stored in 4-bit.

Before anything is written, the merge checks itself: the merged model's logits on a probe prompt must match the
unmerged base + adapter (and for QLoRA the 4-bit base + adapter that training saw) within MERGE_CHECK_BOUND /
QLORA_CHECK_BOUND, else it fails with MergeCheckError. The chat format the adapter was trained with is saved too
(`dojo_chat_format.json`), and its stop tokens become the merged generation_config's eos_token_id.

The folder is written next to `--output` under a temporary name and renamed at the end: a failed merge leaves no
half-written folder behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from llm_dojo.data.chat_format import ChatFormat, chat_format_for_inference
from llm_dojo.infer.common import pad_token_id, stop_token_ids
from llm_dojo.models.embedded import resolve_model_path
from llm_dojo.models.loading import (load_model, load_tokenizer, load_with_adapter, parse_dtype, read_adapter_base,
                                     tokenizer_source, trained_in_4bit)

logger = logging.getLogger(__name__)

# The merge checks itself: logits of the merged model on a probe prompt against the unmerged model (and, for QLoRA,
# against the 4-bit base + adapter that training saw). Bounds on max |Δ logit| / max |logit|, by merged dtype:
# fp32 merging only reorders sums (measured ~1e-5 relative); bf16/fp16 round every merged weight once.
MERGE_CHECK_BOUND = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
# The 4-bit kernel de-quantises inside its matmul, in another order than a de-quantised copy (measured ~1e-5).
QLORA_CHECK_BOUND = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 3e-2}
PROBE_MESSAGE = "Name three colours of the rainbow and say which one you like best."


class MergeCheckError(ValueError):
    """The merged model does not reproduce base + adapter on the probe prompt: nothing is written."""


def qlora_evidence(adapter_dir: str, base: str) -> Optional[str]:
    """Why this adapter looks trained on a 4-bit base (a sentence for the log), or None if nothing says so."""
    evidence = trained_in_4bit(adapter_dir)
    if evidence:
        return evidence
    base_config = Path(resolve_model_path(base)) / "config.json"
    if base_config.is_file():
        quantization = json.loads(base_config.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quantization.get("load_in_4bit") or quantization.get("bnb_4bit_quant_type"):
            return f"the base model {base} is stored in 4-bit"
    return None


def check_not_repacked(model) -> None:
    """Refuse to de-quantise 4-bit weights that a forward pass has already repacked.

    On CPUs with AVX-512 BF16, bitsandbytes (0.47 to at least 0.50.2) rewrites a Linear4bit weight in place into a
    CPU-specific layout on its first eval-mode forward; `dequantize_4bit` on such a weight returns garbage (max error
    5.8 on a 576×576 layer). So we only de-quantise a freshly loaded 4-bit model, and this check makes sure.
    """
    for name, module in model.named_modules():
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
            raise MergeCheckError(f"{name}: this 4-bit weight was repacked for the CPU by a forward pass and can no "
                                  f"longer be de-quantised correctly; load the 4-bit model fresh and de-quantise it "
                                  f"before running it")


def load_base_for_merge(base: str, dtype: torch.dtype, *, qlora: bool, trust_remote_code: bool = False):
    """The base weights the adapter must be added to: as stored, or (QLoRA) the 4-bit weights de-quantised to `dtype`."""
    if not qlora:
        return load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
    # Quantise exactly as training did (NF4, double quant — load_model's recipe), then expand back to `dtype`
    # before any forward pass (see check_not_repacked).
    model = load_model(base, load_in_4bit=True, dtype=dtype, trust_remote_code=trust_remote_code)
    check_not_repacked(model)
    model = model.dequantize(dtype=dtype)
    return model.to(dtype)


def probe_ids(tokenizer) -> torch.Tensor:
    """A short chat prompt (the template's generation prompt when there is one) as a (1, n) tensor."""
    messages = [{"role": "user", "content": PROBE_MESSAGE}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return torch.tensor([tokenizer(PROBE_MESSAGE)["input_ids"]])


@torch.no_grad()
def probe_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids.to(model.device), use_cache=False).logits.float().cpu()


def check_close(merged: torch.Tensor, reference: torch.Tensor, bound: float, what: str) -> float:
    """Relative max logit difference; raises MergeCheckError above `bound`."""
    error = float((merged - reference).abs().max() / reference.abs().max().clamp(min=1e-6))
    logger.info("merge check: merged vs %s: max |Δ logit| / max |logit| = %.2e (bound %.0e)", what, error, bound)
    if not error <= bound:
        raise MergeCheckError(f"the merged model differs from {what} on a probe prompt: relative logit error "
                              f"{error:.2e} > {bound:.0e}; nothing was written")
    return error


@contextlib.contextmanager
def training_path_4bit(model) -> Iterator[None]:
    """Run 4-bit layers on the code path training uses, without dropout.

    bitsandbytes switches an eval-mode, no-grad Linear4bit on AVX-512 BF16 CPUs to a repacked bf16 kernel (a relative
    logit difference of ~3e-2 on SmolLM2); training never takes that path. Marking only the 4-bit layers as training
    (they have no dropout) keeps the de-quantising matmul training used, while LoRA dropout stays off.
    """
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def adapter_on_4bit_logits(base: str, adapter: str, dtype: torch.dtype, ids: torch.Tensor,
                           trust_remote_code: bool) -> torch.Tensor:
    """What QLoRA training saw: the 4-bit base + the adapter, on the probe prompt (a fresh 4-bit copy)."""
    model = load_with_adapter(base, adapter, dtype=dtype, load_in_4bit=True, trust_remote_code=trust_remote_code)
    with training_path_4bit(model):
        logits = probe_logits(model, ids)
    del model
    return logits


def merged_generation_config(model, tokenizer, chat_format: ChatFormat):
    """The base's generation config with eos_token_id covering the chat format's stop token(s)."""
    config = model.generation_config
    config.eos_token_id = stop_token_ids(tokenizer, model, chat_format)
    config.pad_token_id = pad_token_id(tokenizer)
    return config


def write_merged_folder(model, tokenizer, chat_format: ChatFormat, folder: Path, *, max_shard_size: str,
                        provenance: dict[str, Any]) -> None:
    """Save weights (safetensors shards), tokenizer + chat template and format, generation config, provenance."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    tokenizer.chat_template = chat_format.chat_template
    tokenizer.save_pretrained(folder)
    chat_format.save(folder)
    merged_generation_config(model, tokenizer, chat_format).save_pretrained(folder)
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
    target = Path(output).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    base = base or read_adapter_base(adapter)
    evidence = "--from-qlora" if from_qlora else qlora_evidence(adapter, base)
    qlora = bool(evidence) if from_qlora is None else from_qlora
    torch_dtype = _merge_dtype(dtype, base)
    logger.info("merging %s into %s (%s, %s)", adapter, base, str(torch_dtype).removeprefix("torch."),
                f"QLoRA: de-quantised 4-bit base, because {evidence}" if qlora else "full-precision base")

    tokenizer = load_tokenizer(tokenizer_source(base, adapter), trust_remote_code=trust_remote_code)
    chat_format = chat_format_for_inference(tokenizer, adapter, resolve_model_path(base))
    model, checks = merged_and_checked(adapter, base, tokenizer, torch_dtype, qlora, trust_remote_code)

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        provenance = {"adapter": str(adapter), "base": base, "dtype": str(torch_dtype).removeprefix("torch."),
                      "qlora": qlora, "qlora_evidence": evidence, "chat_format": chat_format.name,
                      "stop_tokens": list(chat_format.stop_tokens), "checks": checks}
        write_merged_folder(model, tokenizer, chat_format, scratch, max_shard_size=max_shard_size,
                            provenance=provenance)
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


def merged_and_checked(adapter: str, base: str, tokenizer, dtype: torch.dtype, qlora: bool,
                       trust_remote_code: bool) -> tuple[Any, dict[str, float]]:
    """Merge the adapter into its base and prove the result: returns (merged model, relative errors measured)."""
    from peft import PeftModel

    ids = probe_ids(tokenizer)
    model = load_base_for_merge(base, dtype, qlora=qlora, trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # training added tokens; the adapter saved the larger matrices
    model = PeftModel.from_pretrained(model, adapter).eval()
    unmerged = probe_logits(model, ids)
    model = model.merge_and_unload().eval()
    merged = probe_logits(model, ids)
    checks = {"vs_unmerged": check_close(merged, unmerged, MERGE_CHECK_BOUND.get(dtype, 3e-2), "base + adapter")}
    if qlora:
        trained_on = adapter_on_4bit_logits(base, adapter, dtype, ids, trust_remote_code)
        checks["vs_4bit_base_plus_adapter"] = check_close(merged, trained_on, QLORA_CHECK_BOUND.get(dtype, 5e-2),
                                                          "the 4-bit base + adapter (what QLoRA training saw)")
    return model, checks


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
    except (FileExistsError, FileNotFoundError, ValueError) as error:  # MergeCheckError is a ValueError
        print(f"dojo merge: error: {error}", file=sys.stderr)
        return 2
    return 0
