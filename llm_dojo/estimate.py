"""Expected peak memory per device of a training config, before anything is loaded.

    dojo estimate CONFIG.yaml [key=value ...] [--gpus N] [--gpu-memory GiB] [--device auto|cpu|gpu]

The config is read as `dojo train` reads it; parameters are counted exactly on a meta-device model (no weights
are loaded); the recipe's own choices (dtype, tokens per micro-batch, gradient checkpointing) are mirrored.
Peak = runtime (+ mapped checkpoint pages) + weights + adapter + optimizer state
       + max(gradients, activations + logits + output-head gradient):
the backward pass frees each layer's activations as it creates that layer's gradients, so the peak holds the larger
of the two. The formulas and their check against measured runs are in docs/estimate.md.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_dojo.config import CHECKPOINTING_KEYS, TrainConfig, checkpointing_on, load_config
from llm_dojo.estimate_counts import NF4_BYTES_PER_WEIGHT, ParameterCounts, count_parameters, meta_model, model_config
from llm_dojo.models.embedded import CACHE_VERSION, EMBEDDED_ALIAS, cache_root
from llm_dojo.recipes.sft import activation_bytes_per_token

MODES = ("full", "lora", "qlora")
ADAPTER_BYTES = 4  # PEFT keeps adapter weights in fp32 even on a bf16 base (autocast_adapter_dtype)
FP32 = 4
MIB = 2**20


@dataclass(frozen=True)
class Target:
    """The device the run would train on: its dtype, how many, the memory each may use, the runtime's share."""

    device: str  # "cpu" or "gpu"
    dtype: torch.dtype
    devices: int
    budget: int  # bytes one device may use
    runtime: int  # bytes of the Python process before the model loads (host memory: counted on a CPU only)


def dtype_for(config: TrainConfig, device: str) -> torch.dtype:
    """model_dtype as `parse_dtype` resolves it, but for the target device: 'auto' is fp32 on a CPU, bf16 on a GPU."""
    from llm_dojo.models.loading import parse_dtype

    if config.model.model_dtype in (None, "", "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    return parse_dtype(config.model.model_dtype)


def micro_batch_tokens(config: TrainConfig, device: str, deepspeed: bool = False) -> int:
    """Most tokens one forward/backward holds, as adjust_training_arguments and DojoTrainer split batches.

    A batch is cut into micro-batches of whole rows (≤ max_len each) under `micro_batch_tokens` (on a CPU it
    defaults to one max_len row); under DeepSpeed, or on a GPU with no budget, the whole batch goes at once.
    """
    args, max_len = config.training, config.data.max_len
    whole_batch = args.per_device_train_batch_size * max_len
    budget = args.micro_batch_tokens or (max_len if device == "cpu" else None)
    if deepspeed or budget is None:
        return whole_batch
    return min(whole_batch, max(budget, max_len))  # a row longer than the budget still goes alone


def optimizer_bytes_per_param(optim: str, param_bytes: int) -> float:
    """State bytes per trainable parameter for the Trainer's `optim` (AdamW: two moments in the parameter's dtype)."""
    name = str(getattr(optim, "value", optim)).lower()
    if any(key in name for key in ("sgd", "adafactor", "lomo")):
        moments = 0  # plain SGD (the Trainer sets no momentum); Adafactor's factored moments are rows + columns
    elif any(key in name for key in ("lion", "adagrad", "rmsprop")):
        moments = 1
    else:
        moments = 2  # the AdamW family (default adamw_torch_fused)
    per_moment = 1 if "8bit" in name else 0.5 if "4bit" in name else FP32 if "32bit" in name else param_bytes
    return moments * per_moment


def base_weight_bytes(counts: ParameterCounts, mode: str, dtype_bytes: int, loaded: bool = False) -> int:
    """Base weights: the model's dtype, or NF4 for QLoRA. QLoRA's other weights (embeddings, norms) are cast to fp32
    by prepare_model_for_kbit_training; `loaded` gives them as loaded, the way choose_checkpointing counts them."""
    if mode != "qlora":
        return counts.total * dtype_bytes
    rest = counts.total - counts.quantizable
    if loaded:  # bitsandbytes packs two 4-bit weights per byte; absmax lives in the quant state, not a parameter
        return counts.quantizable // 2 + rest * dtype_bytes
    return int(counts.quantizable * NF4_BYTES_PER_WEIGHT) + rest * FP32


def checkpoint_dtype_bytes(cfg) -> int:
    """Bytes per weight in the model's files (config.json's dtype; the converted embedded model is fp32)."""
    stored = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    if isinstance(stored, str):
        stored = getattr(torch, stored, torch.float32)
    return stored.itemsize if isinstance(stored, torch.dtype) else FP32


def activations_per_token(cfg, counts: ParameterCounts, mode: str, dtype_bytes: int, dropout: float) -> dict:
    """Bytes per token kept for the backward pass, without and with gradient checkpointing."""
    full = activation_bytes_per_token(cfg, dtype_bytes)
    if mode != "full":
        # PEFT feeds every target layer's input through its own dropout (a new fp32 tensor and a 1-byte mask); with
        # no dropout on a half-precision base it still keeps an fp32 cast of that input.
        per_input = (ADAPTER_BYTES + 1) if dropout > 0 else (ADAPTER_BYTES if dtype_bytes < ADAPTER_BYTES else 0)
        full += counts.lora_inputs_per_token * per_input
    layers = getattr(cfg, "num_hidden_layers", 1) or 1
    # Checkpointing keeps each layer's input and recomputes one layer at a time in the backward pass.
    checkpointed = layers * cfg.hidden_size * dtype_bytes + full // layers
    return {"without": full, "with": checkpointed}


def recipe_checkpointing(config: TrainConfig, cfg, counts: ParameterCounts, mode: str, target: Target) -> bool:
    """Gradient checkpointing as choose_checkpointing in recipes/sft.py decides it (same rule, same numbers)."""
    if config.explicit_keys & set(CHECKPOINTING_KEYS):
        return checkpointing_on(config.training)
    args = config.training
    tokens = args.micro_batch_tokens or (config.data.max_len if target.device == "cpu" else
                                         args.per_device_train_batch_size * config.data.max_len)
    dtype_bytes = target.dtype.itemsize
    needed = tokens * activation_bytes_per_token(cfg, dtype_bytes)
    held = base_weight_bytes(counts, mode, dtype_bytes, loaded=True) * (4 if mode == "full" else 1)
    return needed > held or needed > target.budget / 4


def mode_memory(config: TrainConfig, cfg, counts: ParameterCounts, mode: str, target: Target,
                zero_stage: int = -1) -> dict:
    """Bytes per device of each part of one training mode; zero_stage -1 is the plain recipe (no DeepSpeed)."""
    dtype_bytes = target.dtype.itemsize
    trainable, trainable_bytes = (counts.total, dtype_bytes) if mode == "full" else (counts.lora, ADAPTER_BYTES)
    tokens = micro_batch_tokens(config, target.device, deepspeed=zero_stage >= 0)
    per_token = activations_per_token(cfg, counts, mode, dtype_bytes, config.adapter.lora_dropout)
    checkpointing = recipe_checkpointing(config, cfg, counts, mode, target)
    # Only trained positions are projected to the vocabulary (loss.py); at most every position of the micro-batch.
    # Logits in the model's dtype, their fp32 copy, log-softmax and its gradient (4 × fp32 measured in fp32).
    logits = tokens * cfg.vocab_size * (dtype_bytes + 3 * FP32)
    # Full training: the output head's weight gradient is made first in the backward pass, beside every activation.
    head_grad = cfg.vocab_size * cfg.hidden_size * dtype_bytes if mode == "full" else 0
    shards = max(1, target.devices)
    # A 4-bit load on a CPU reads every weight it quantises from the memory-mapped safetensors file; those file pages
    # stay resident while the mapping lives (the unquantised embeddings still point into it): measured 416 MiB of
    # file-backed memory after loading SmolLM2 in 4 bits, against its 106 M quantised weights × 4 bytes = 405 MiB.
    mapped = counts.quantizable * checkpoint_dtype_bytes(cfg) if mode == "qlora" and target.device == "cpu" else 0
    parts = {
        "runtime": target.runtime,
        "mapped_checkpoint": mapped,
        "weights": base_weight_bytes(counts, mode, dtype_bytes) / (shards if zero_stage >= 3 else 1),
        "adapter": (0 if mode == "full" else counts.lora * ADAPTER_BYTES) / (shards if zero_stage >= 3 else 1),
        "gradients": trainable * trainable_bytes / (shards if zero_stage >= 2 else 1),
        "optimizer": trainable * optimizer_bytes_per_param(config.training.optim, trainable_bytes)
                     / (shards if zero_stage >= 1 else 1),
        "activations": tokens * per_token["with" if checkpointing else "without"],
        "logits": logits,
        "head_gradient": head_grad,
    }
    backward = max(parts["gradients"], parts["activations"] + logits + head_grad)
    peak = sum(parts[k] for k in ("runtime", "mapped_checkpoint", "weights", "adapter", "optimizer")) + backward
    return {"parts": {k: int(v) for k, v in parts.items()}, "peak": int(peak), "tokens": tokens,
            "checkpointing": checkpointing, "trainable": trainable,
            "activations_without": tokens * per_token["without"], "activations_with": tokens * per_token["with"]}


@functools.lru_cache(maxsize=4)
def runtime_bytes(tokenizer_folder: str = "") -> int:
    """Resident memory of a fresh Python process with torch, transformers' Trainer, PEFT and the tokenizer loaded:
    measured now, in a subprocess, so this process's own state does not count."""
    code = ("import sys, psutil, peft, transformers\nfrom transformers import Trainer\n"
            "if sys.argv[1]:\n    transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "print(psutil.Process().memory_info().rss)")
    done = subprocess.run([sys.executable, "-c", code, tokenizer_folder], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"measuring the runtime's memory failed: {done.stderr.strip()[-500:]}")
    return int(done.stdout.split()[-1])


def local_tokenizer(model_name_or_path: str) -> str:
    """A folder holding the tokenizer (the converted embedded model, or a local model), else '' (not downloaded)."""
    if model_name_or_path.strip().lower() == EMBEDDED_ALIAS:
        folder = cache_root() / f"{EMBEDDED_ALIAS}-{CACHE_VERSION}"
        return str(folder) if (folder / "tokenizer_config.json").is_file() else ""
    return model_name_or_path if (Path(model_name_or_path) / "tokenizer_config.json").is_file() else ""


def device_budget(device: str, gpu_memory: float | None) -> int:
    """Bytes one device may use: --gpu-memory (GiB), else the GPU's memory or the machine's available RAM."""
    if gpu_memory is not None:
        if gpu_memory <= 0:
            raise ValueError(f"--gpu-memory must be positive (GiB), got {gpu_memory}")
        return int(gpu_memory * 2**30)
    if device == "gpu":
        if not torch.cuda.is_available():
            raise ValueError("--device gpu on a machine without a GPU needs --gpu-memory GiB (e.g. 80)")
        return torch.cuda.get_device_properties(0).total_memory
    import psutil

    return psutil.virtual_memory().available


def estimate(config: TrainConfig, devices: int = 1, gpu_memory: float | None = None, device: str = "auto") -> dict:
    """Every number of the report (bytes), for the configured mode and the other two."""
    if devices < 1:
        raise ValueError(f"--gpus must be at least 1, got {devices}")
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    budget = device_budget(device, gpu_memory)  # checked before the slower steps below
    name = config.model.model_name_or_path
    cfg = model_config(name, config.model.trust_remote_code)
    counts = count_parameters(meta_model(cfg, config.model.trust_remote_code), config.adapter.lora_target_modules,
                              config.adapter.lora_rank, config.adapter.use_dora)
    runtime = runtime_bytes(local_tokenizer(name)) if device == "cpu" else 0
    target = Target(device, dtype_for(config, device), devices, budget, runtime)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()  # multimodal configs keep the language model's inside
    modes = {}
    for mode in MODES:
        modes[mode] = mode_memory(config, cfg, counts, mode, target)
        modes[mode]["zero"] = {stage: mode_memory(config, cfg, counts, mode, target, stage)["peak"]
                               for stage in range(4)}
    return {"config": config, "model": name, "train_mode": config.model.train_mode, "device": device,
            "devices": devices,
            "dtype": str(target.dtype).replace("torch.", ""), "budget": target.budget, "counts": counts,
            "lora_targets": list(counts.targets), "modes": modes}


class _Parser(argparse.ArgumentParser):
    """argparse exits the process on a bad option; raise instead: cli.py prints `dojo estimate: error: …`."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ValueError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """CONFIG and key=value overrides, in any order with the options."""
    parser = _Parser(prog="dojo estimate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", help="CONFIG.yaml, then key=value overrides as for dojo train")
    parser.add_argument("--gpus", type=int, default=1, help="devices for the DeepSpeed ZeRO table (default 1)")
    parser.add_argument("--gpu-memory", type=float, default=None,
                        help="GiB per device (default: the GPU's memory; on a CPU the available RAM)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="estimate for this machine (auto), or for a GPU or CPU elsewhere")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str]) -> int:
    """`dojo estimate CONFIG.yaml [key=value ...] [--gpus N] [--gpu-memory GiB]`: a table, then one JSON line."""
    from llm_dojo.estimate_report import render

    args = parse_args(argv)
    config_path = args.items[0] if args.items and "=" not in args.items[0] else None
    overrides = args.items[1:] if config_path else args.items
    if args.gpus < 1:  # before the config is read: the cheapest mistake to report
        raise ValueError(f"--gpus must be at least 1, got {args.gpus}")
    config = load_config(config_path, overrides)
    print(render(estimate(config, args.gpus, args.gpu_memory, args.device)))
    return 0
