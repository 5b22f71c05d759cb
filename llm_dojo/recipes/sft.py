"""Supervised fine-tuning, top to bottom: config → data → model → Trainer → saved adapter.

    dojo train CONFIG.yaml [key=value ...]        (or: python main_train.py CONFIG.yaml [key=value ...])

Everything that can fail because of the user's input (config, data files, records, template) is checked
before the model is loaded, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from llm_dojo.config import (CHECKPOINTING_KEYS, ConfigError, TrainConfig, checkpointing_kwargs, checkpointing_on,
                             config_for_saving, config_help, load_config, set_checkpointing)
from llm_dojo.data.batching import BatchPackingCollator, PaddedCollator
from llm_dojo.data.store import open_training_data
from llm_dojo.data.sources import DataError
from llm_dojo.eval.hook import eval_after_training
from llm_dojo.models.adapters import build_optimizer, count_parameters, make_trainable
from llm_dojo.models.loading import load_model, load_tokenizer, parse_dtype
from llm_dojo.preflight import check_model, check_output_dir
from llm_dojo.recipes.checkpoints import SealCheckpoints, checkpoint_to_resume, safetensors_is_empty
from llm_dojo.recipes.outputs import adapter_card, heldout_loss, save_outputs

logger = logging.getLogger(__name__)


def make_collator(config: TrainConfig, tokenizer):
    """Per-batch packing into rows of ≤ max_len (flattened into one row for flash-attention), or padding."""
    if not config.data.packing:
        return PaddedCollator(tokenizer.pad_token_id)
    from transformers.utils.generic import is_flash_attention_requested

    # Flash-attention separates packed samples only within a single row (see PackedCollator). transformers'
    # own test, so hub kernels such as kernels-community/vllm-flash-attn3 count too.
    flash = is_flash_attention_requested(requested_attention_implementation=config.model.attn_implementation)
    return BatchPackingCollator(tokenizer.pad_token_id, capacity=config.data.max_len, flatten=flash)


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

    if config.stage.stage == "grpo":  # each stage is its own recipe file; they share this module's helpers
        from llm_dojo.recipes.rl import train_rl

        return train_rl(config, return_model)
    if config.stage.stage == "distill":
        from llm_dojo.recipes.distill import train_distill

        return train_distill(config, return_model)
    if config.stage.stage != "sft":
        from llm_dojo.recipes.preference import train_preference

        return train_preference(config, return_model)
    from llm_dojo.recipes.trainer import CountingCollator, DojoTrainer  # transformers' Trainer: not for --help

    args = config.training
    check_model(config.model.model_name_or_path)
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    set_seed(args.seed)
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    data = open_training_data(config.data, tokenizer, args.seed, args)  # encoded once, cached on disk

    resume = checkpoint_to_resume(args.resume_from_checkpoint, args.output_dir)  # checked before the model loads
    adjust_training_arguments(config)
    model = load_trainable_model(config)
    # Saved with the outputs: the user's settings plus what the recipe decided (checkpointing, token budget),
    # taken before NEFTune is handed from the Trainer to our own implementation below.
    resolved_config = config_for_saving(config)

    neftune = None
    if config.adapter.trick_impl == "dojo" and args.neftune_noise_alpha:
        # Our NEFTune scales the noise by each sample's own length, also inside packed rows; the library's
        # version (used with trick_impl: peft) scales by the row length. Only one of them may run, so the
        # Trainer's is switched off here (the saved config still records the user's alpha).
        from llm_tricks.neftune import attach_neftune

        neftune = attach_neftune(model, args.neftune_noise_alpha)
        args.neftune_noise_alpha = None

    # Samples, packed or not, memory-mapped from the cache: with packing the collator packs each batch's samples
    # into rows (make_collator).
    train_dataset, eval_dataset = data.train, data.eval
    trainer = DojoTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=CountingCollator(make_collator(config, tokenizer)),
        processing_class=tokenizer,
        optimizers=(build_optimizer(model, config), None),
        callbacks=training_callbacks(args),
    )
    started, interrupted = time.time(), False
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:  # Ctrl-C: keep what was learned so far (a second Ctrl-C stops the save)
        interrupted = True
    seconds = time.time() - started
    if neftune is not None:
        neftune.remove()
    summary = run_summary(trainer, data, seconds, interrupted)
    summary["resumed_from"] = resume
    if eval_dataset is not None and not interrupted:
        summary["eval_loss"] = heldout_loss(model, eval_dataset, make_collator(config, tokenizer))
        trainer.state.log_history.append({"step": trainer.state.global_step, "eval_loss": summary["eval_loss"]})
        logger.info("held-out loss over all %d held-out samples: %.4f", len(data.eval), summary["eval_loss"])
    save_run(trainer, config, tokenizer, data, resolved_config, summary)
    if interrupted:
        raise TrainingInterrupted(trainer.state.global_step, trainer.state.max_steps, args.output_dir)
    eval_after_training(config, trainer.model, tokenizer, data.chat_format, summary)  # config key eval_after_training
    return (summary, trainer.model) if return_model else summary


def training_callbacks(args) -> list:
    """Seal each finished checkpoint (checkpoints.py); stop early when eval_loss stops improving, if asked."""
    from transformers import EarlyStoppingCallback

    callbacks = [SealCheckpoints()]
    if args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    return callbacks


class TrainingInterrupted(Exception):
    """Ctrl-C during training; what was trained so far has been saved."""

    def __init__(self, step: int, total: int, output_dir: str):
        super().__init__(f"interrupted at step {step} of {total}; the adapter trained so far is saved in {output_dir} "
                         f"(training_summary.json says interrupted: true)")


def run_summary(trainer, data, seconds: float, interrupted: bool) -> dict:
    """Loss, time and throughput of a finished (or interrupted) run, counted from what was actually trained."""
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    real_tokens, samples = trainer.counts_over_all_processes()
    samples_per_s = round(samples / seconds, 2) if seconds else None
    for entry in history:  # the Trainer counts a packed row as one sample: replace with real samples
        if "train_samples_per_second" in entry:
            entry["train_samples_per_second"] = samples_per_s
    final_loss = next((e["train_loss"] for e in reversed(history) if "train_loss" in e), None)
    return {
        "train_loss": final_loss if final_loss is not None else (sum(losses) / len(losses) if losses else None),
        "last_logged_loss": losses[-1] if losses else None,
        "interrupted": interrupted,
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "real_tokens_trained": real_tokens,
        "real_tokens_per_s": round(real_tokens / seconds, 1) if seconds else None,
        "samples_trained": samples,
        "processes": trainer.accelerator.num_processes,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "samples_per_s": samples_per_s,
        "samples": len(data.train),
        "chat_format": data.chat_format.name,
        "log_history": history,
    }


def adjust_training_arguments(config: TrainConfig) -> None:
    """Settings the recipe decides for the Trainer: sampling order, pinned memory, token budget, Liger's kernels."""
    args = config.training
    if config.data.packing:
        # Random batches mix long and short samples, so each batch packs into few, well-filled rows.
        args.train_sampling_strategy = "random"
    else:
        args.train_sampling_strategy = "group_by_length"  # similar lengths together: less padding
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinned memory only helps copies to a GPU (and warns without one)
        if args.micro_batch_tokens is None:
            # On a CPU one max_len row per forward is the fastest and leanest (FIELD_NOTES: batch 1 × accumulation
            # 8 ran 1.3× faster at 2.8 GiB than batch 8 at 10.5–21 GiB): split bigger batches into such rows.
            args.micro_batch_tokens = config.data.max_len
    prepare_liger_kernel(args)


def load_trainable_model(config: TrainConfig):
    """The base model (4-bit for QLoRA) with adapters attached, or every weight unfrozen for full fine-tuning."""
    model = load_model(
        config.model.model_name_or_path,
        load_in_4bit=config.model.train_mode == "qlora",
        dtype=parse_dtype(config.model.model_dtype),
        trust_remote_code=config.model.trust_remote_code,
        attn_implementation=None if config.model.attn_implementation == "dojo_packed" else
        config.model.attn_implementation,
    )
    model.config.use_cache = False
    if uses_packed_attention(config):
        from llm_dojo.attention import register

        model.dojo_saved_attention = model.config._attn_implementation  # restored before saving
        model.set_attn_implementation(register())
        logger.info("attention: per-sample (dojo_packed) for packed rows; the saved model keeps %s",
                    config.model.attn_implementation or "transformers' default")
    choose_checkpointing(config, model)
    if checkpointing_on(config.training) and not checkpointing_kwargs(config.training):
        set_checkpointing(config.training, True, {"use_reentrant": False})  # chosen or asked for
    model = make_trainable(model, config)
    trainable, total = count_parameters(model)
    logger.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def activation_bytes_per_token(model_config, dtype_bytes: int) -> int:
    """Rough memory one token's activations keep for the backward pass without checkpointing, all layers.

    layers × dtype × (12 × hidden + 4 × intermediate): for SmolLM2-135M in fp32 1.57 MB per token, against 1.3 MB
    measured on this CPU (21.2 GiB without checkpointing vs 10.5 GiB with it, for 8,192-token batches).
    """
    hidden = getattr(model_config, "hidden_size", 0) or 0
    intermediate = getattr(model_config, "intermediate_size", 0) or 4 * hidden
    layers = getattr(model_config, "num_hidden_layers", 0) or 0
    return layers * dtype_bytes * (12 * hidden + 4 * intermediate)


def choose_checkpointing(config: TrainConfig, model) -> None:
    """Gradient checkpointing only where it pays. It recomputes each layer's forward (on a CPU that cost no wall
    time in the bench: 113.5 real tokens/s without, 104.8-114.0 with) and keeps a small fraction of the
    activations (6.0 vs 2.6-2.7 GB peak for SmolLM2-135M), so it is on when one micro-batch's
    activations would be the larger part of the peak, i.e. more than the weights and optimizer state the
    training holds anyway (or more than a quarter of the free memory), and off when they are small beside them.
    An explicit `gradient_checkpointing` (or its new name `activation_checkpointing`) always wins."""
    args = config.training
    if config.explicit_keys & set(CHECKPOINTING_KEYS):
        return
    tokens = args.micro_batch_tokens or args.per_device_train_batch_size * config.data.max_len
    dtype_bytes = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    needed = tokens * activation_bytes_per_token(model.config, dtype_bytes)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Full fine-tuning adds a gradient and AdamW's two moments per weight; adapters add next to nothing.
    held = weights * (4 if config.model.train_mode == "full" else 1)
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    set_checkpointing(args, needed > held or needed > free / 4)
    logger.info("gradient checkpointing %s: one forward of %d tokens needs ~%.1f GiB of activations beside %.1f GiB "
                "of weights and optimizer state, %.1f GiB free (set gradient_checkpointing to choose)",
                "on" if args.gradient_checkpointing else "off", tokens, needed / 2**30, held / 2**30, free / 2**30)


def uses_packed_attention(config: TrainConfig) -> bool:
    """Per-sample attention (llm_dojo/attention.py) when packing on a CPU and the user chose no attention.

    On a CPU, SDPA computes every block of a packed row's block-diagonal mask; computing each sample alone costs
    the samples' lengths squared instead (measured 7% faster per 1,000-token SmolLM2 row of ten samples).
    `attn_implementation: dojo_packed` asks for it anywhere; any other explicit choice is kept.
    """
    if not config.data.packing:
        return False
    if config.model.attn_implementation == "dojo_packed":
        return True
    return config.model.attn_implementation is None and not torch.cuda.is_available()


def save_run(trainer, config: TrainConfig, tokenizer, data, resolved_config: dict, summary: dict) -> None:
    """Weights, tokenizer, chat format, config, summary and card into output_dir, written by the first process.

    Under DeepSpeed or FSDP each process holds a shard of the weights: all of them take part in the Trainer's
    save_model, which gathers them (ZeRO-3 needs stage3_gather_16bit_weights_on_model_save), and the first
    process then moves the gathered files into the output with the rest.
    """
    output_dir = Path(config.training.output_dir)
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    gathered = output_dir / ".gathered-weights"
    if sharded:
        trainer.save_model(str(gathered))

    def weights(folder: Path) -> None:
        if sharded:
            for file in gathered.iterdir():
                os.replace(file, folder / file.name)
        else:
            write_weights(trainer.model, folder, config)
        empty = [f.name for f in folder.glob("*.safetensors") if safetensors_is_empty(f)]
        if empty:
            raise RuntimeError(f"the saved {empty[0]} holds no weights; with DeepSpeed ZeRO-3 set "
                               f"stage3_gather_16bit_weights_on_model_save: true (train_args/launch/ds_zero3.json)")

    if trainer.is_world_process_zero():  # several processes hold the same weights: one writes them
        card = adapter_card(config, resolved_config, summary, data)
        save_outputs(output_dir, weights, tokenizer, data.chat_format, resolved_config, summary, card=card)
        if sharded:
            shutil.rmtree(gathered, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def write_weights(model, folder: Path, config: TrainConfig) -> None:
    """The adapter in PEFT's format (from PEFT, or converted from our own llm_tricks layers), or the full model."""
    if uses_packed_attention(config):  # a saved config.json must name an attention every transformers knows
        model.set_attn_implementation(getattr(model, "dojo_saved_attention", None) or "sdpa")
    if config.adapter.trick_impl == "dojo" and config.model.train_mode != "full":
        from llm_tricks.inject import save_as_peft_adapter

        adapter = config.adapter
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")})
        save_as_peft_adapter(
            model, folder, base_model_name_or_path=config.model.model_name_or_path, r=adapter.lora_rank,
            lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout, use_dora=adapter.use_dora,
            use_rslora=adapter.use_rslora, target_modules=targets,
        )
    else:
        model.save_pretrained(folder)


def main(argv: list[str]) -> int:
    """`dojo train CONFIG.yaml [key=value ...]`; exits 2 with a clear message on bad config or data, 130 on Ctrl-C."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(config_help())
        return 0
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        config = load_config(config_path, overrides)
        summary = train(config)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dojo train: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"dojo train: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("dojo train: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # several processes (torchrun): the first one reports
        return 0
    eval_text = f", held-out loss {summary['eval_loss']:.4f}" if "eval_loss" in summary else ""
    print(f"dojo train: done in {summary['train_seconds']} s, {summary['steps']} steps, final train loss "
          f"{summary['train_loss']:.4f}{eval_text}; {summary['real_tokens_per_s']} real tokens/s; saved to "
          f"{config.training.output_dir}", file=sys.stderr)
    return 0
