"""Supervised fine-tuning, top to bottom: config → data → model → Trainer → saved adapter.

    dojo train CONFIG.yaml [key=value ...]        (or: python main_train.py CONFIG.yaml [key=value ...])

Everything that can fail because of the user's input (config, data files, records, template) is checked
before the model is loaded, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from llm_dojo.config import ConfigError, TrainConfig, config_help, load_config
from llm_dojo.data.batching import (PackedCollator, PaddedCollator, build_packed_rows, rows_as_records,
                                    samples_as_records)
from llm_dojo.data.encode import ChatFormat, EncodedSample, encode_dataset, resolve_chat_format
from llm_dojo.data.records import DataError, load_conversations
from llm_dojo.models.adapters import build_optimizer, count_parameters, make_trainable
from llm_dojo.models.loading import load_model, load_tokenizer, parse_dtype

logger = logging.getLogger(__name__)


class ListDataset(torch.utils.data.Dataset):
    """A list of ready feature dicts."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def prepare_data(config: TrainConfig, tokenizer) -> tuple[list[EncodedSample], Optional[list[EncodedSample]], ChatFormat]:
    """Read, check and encode the training (and optional eval) data."""
    data = config.data
    chat_format = resolve_chat_format(tokenizer, data.template_name)
    logger.info("chat template: %s; trained terminator: %r", chat_format.name, chat_format.terminator)

    conversations, report = load_conversations(data.train_data_path, data.dataset_format, data.skip_invalid,
                                               data.max_samples, data.train_data_ratios, config.training.seed)
    train_samples, stats = encode_dataset(conversations, tokenizer, chat_format, data.max_len, data.mask_history)
    logger.info("train data: %d records read, %d skipped; %s", report.records, report.skipped, stats.summary())
    eval_samples = None
    if data.eval_data_path:
        eval_conversations, _ = load_conversations(data.eval_data_path, data.dataset_format, data.skip_invalid)
        eval_samples, eval_stats = encode_dataset(eval_conversations, tokenizer, chat_format, data.max_len,
                                                  data.mask_history)
        logger.info("eval data: %s", eval_stats.summary())
    return train_samples, eval_samples, chat_format


def make_dataset(samples: list[EncodedSample], config: TrainConfig, seed: int):
    """Packed rows (default) or single samples for the padded path."""
    if config.data.packing:
        rows = build_packed_rows(samples, capacity=config.data.max_len, seed=seed)
        return ListDataset(rows_as_records(rows))
    return ListDataset(samples_as_records(samples))


def make_collator(config: TrainConfig, tokenizer):
    if not config.data.packing:
        return PaddedCollator(tokenizer.pad_token_id)
    from transformers.utils.generic import is_flash_attention_requested

    # Flash-attention separates packed samples only within a single row (see PackedCollator). transformers'
    # own test, so hub kernels such as kernels-community/vllm-flash-attn3 count too.
    flash = is_flash_attention_requested(requested_attention_implementation=config.model.attn_implementation)
    return PackedCollator(tokenizer.pad_token_id, flatten=flash)


def prepare_liger_kernel(args) -> None:
    """`use_liger_kernel: true` (GPU): fail before the model loads if Liger is missing, and keep our loss.

    Liger's fused linear cross-entropy replaces the model's forward with one that needs labels and slices
    `logits_to_keep` as an integer; our loss passes a boolean mask of trained positions instead (see loss.py),
    which already avoids the full logits tensor. So unless the user gives their own `liger_kernel_config`,
    only Liger's RMSNorm, RoPE and SwiGLU kernels are applied.
    """
    if not args.use_liger_kernel:
        return
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("use_liger_kernel: true needs the liger-kernel package (a CUDA GPU with Triton): "
                          "pip install liger-kernel, or set use_liger_kernel: false")
    if args.liger_kernel_config is None:
        args.liger_kernel_config = {"fused_linear_cross_entropy": False}


def train(config: TrainConfig, return_model: bool = False):
    """Run one fine-tuning job and return a summary (losses, timings); with return_model, (summary, model)."""
    from transformers import set_seed

    from llm_dojo.recipes.trainer import DojoTrainer

    args = config.training
    set_seed(args.seed)
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    train_samples, eval_samples, chat_format = prepare_data(config, tokenizer)

    if config.data.packing:
        # One packed row is a batch item; transformers' packed-sequence mask needs no attention mask and no cache.
        args.train_sampling_strategy = "random"
    else:
        args.train_sampling_strategy = "group_by_length"  # similar lengths together: less padding
    if args.gradient_checkpointing and not args.gradient_checkpointing_kwargs:
        args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    prepare_liger_kernel(args)

    model = load_model(
        config.model.model_name_or_path,
        load_in_4bit=config.model.train_mode == "qlora",
        dtype=parse_dtype(config.model.model_dtype),
        trust_remote_code=config.model.trust_remote_code,
        attn_implementation=config.model.attn_implementation,
    )
    model.config.use_cache = False
    model = make_trainable(model, config)
    trainable, total = count_parameters(model)
    logger.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    neftune = None
    if config.adapter.trick_impl == "dojo" and args.neftune_noise_alpha:
        # Our NEFTune scales the noise by each sample's own length, also inside packed rows; the library's
        # version (used with trick_impl: peft) scales by the row length. Only one of them may run.
        from llm_tricks.neftune import attach_neftune

        neftune = attach_neftune(model, args.neftune_noise_alpha)
        args.neftune_noise_alpha = None

    train_dataset = make_dataset(train_samples, config, args.seed)
    eval_dataset = make_dataset(eval_samples, config, args.seed) if eval_samples else None
    trainer = DojoTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=make_collator(config, tokenizer),
        processing_class=tokenizer,
        optimizers=(build_optimizer(model, config), None),
    )
    started = time.time()
    result = trainer.train()
    seconds = time.time() - started
    if neftune is not None:
        neftune.remove()
    real_tokens = sum(len(s.input_ids) for s in train_samples) * args.num_train_epochs
    summary = {
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "real_tokens_per_s": round(real_tokens / seconds, 1) if args.max_steps <= 0 else None,
        "samples": len(train_samples),
        "log_history": trainer.state.log_history,
    }
    if eval_dataset is not None:
        summary["eval_loss"] = heldout_loss(model, eval_dataset, make_collator(config, tokenizer))
    save_outputs(trainer.model, tokenizer, chat_format, config, summary)
    return (summary, trainer.model) if return_model else summary


@torch.no_grad()
def heldout_loss(model, dataset, collator, batch_size: int = 4) -> float:
    """Mean token loss over the WHOLE held-out set (summed over every trained token, then divided once)."""
    from llm_dojo.loss import trained_positions_loss

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum, n = trained_positions_loss(model, batch, num_items_in_batch=1)
        total += float(loss_sum)
        count += n
    model.train(was_training)
    return total / max(1, count)


def save_outputs(model, tokenizer, chat_format: ChatFormat, config: TrainConfig, summary: dict) -> Path:
    """Write adapter (or full model), tokenizer + template, resolved config and loss plot — atomically."""
    output_dir = Path(config.training.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        if config.adapter.trick_impl == "dojo" and config.model.train_mode != "full":
            from llm_tricks.inject import save_as_peft_adapter

            adapter = config.adapter
            save_as_peft_adapter(
                model, staging, base_model_name_or_path=config.model.model_name_or_path, r=adapter.lora_rank,
                lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout, use_dora=adapter.use_dora,
                use_rslora=adapter.use_rslora, target_modules=sorted({n.rsplit(".", 1)[-1] for n, m in
                                                                        model.named_modules() if hasattr(m, "lora_A")}),
            )
        else:
            model.save_pretrained(staging)
        # The template used in training travels with the adapter, so chat/serve render exactly the same text.
        tokenizer.chat_template = chat_format.chat_template
        tokenizer.save_pretrained(staging)
        resolved = config.to_flat_dict()
        (staging / "dojo_config.yaml").write_text(yaml.safe_dump(_plain(resolved), sort_keys=False, allow_unicode=True))
        log = {k: v for k, v in summary.items()}
        (staging / "training_summary.json").write_text(json.dumps(_plain(log), indent=2))
        plot_loss(summary["log_history"], staging / "training_loss.png")
        for item in staging.iterdir():
            destination = output_dir / item.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(item, destination)  # each file appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved to %s", output_dir)
    return output_dir


def _plain(value):
    """Make a value YAML/JSON-safe (enums, tensors, paths → plain types)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if hasattr(value, "value"):
        return _plain(value.value)
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def plot_loss(log_history: list[dict], path: Path) -> None:
    """training_loss.png: the logged training (and eval) loss by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log_history if "loss" in e]
    losses = [e["loss"] for e in log_history if "loss" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, marker="o", label="train loss")
    eval_points = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if eval_points:
        ax.plot(*zip(*eval_points), marker="s", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LLM-Dojo training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """`dojo train CONFIG.yaml [key=value ...]`; exits 2 with a clear message on bad config or data."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(config_help())
        return 0
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        config = load_config(config_path, overrides)
        train(config)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dojo train: error: {err}", file=sys.stderr)
        return 2
    return 0
