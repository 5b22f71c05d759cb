"""Turn a loaded model into a trainable one: LoRA / DoRA / QLoRA through PEFT, our own layers, or full FT."""

from __future__ import annotations

import logging

import torch

from llm_dojo.config import TrainConfig, checkpointing_kwargs, checkpointing_on
from llm_dojo.models.loading import find_linear_targets

logger = logging.getLogger(__name__)


def target_modules(model: torch.nn.Module, spec: str) -> list[str]:
    """'all-linear' → every linear layer but the output head (found per architecture); else the listed names."""
    if spec.strip() == "all-linear":
        return find_linear_targets(model)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    present = set(find_linear_targets(model))
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(
            f"lora_target_modules: {', '.join(missing)} not found in this model; its linear layers are: "
            f"{', '.join(sorted(present))}"
        )
    return names


def peft_init(init_lora_weights: str):
    """PEFT's `init_lora_weights` value for our config string ('default' means PEFT's default, True)."""
    return True if init_lora_weights == "default" else init_lora_weights


def make_trainable(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Attach adapters (or unfreeze everything for full fine-tuning) according to the config."""
    mode, adapter = config.model.train_mode, config.adapter
    checkpointing = checkpointing_on(config.training)
    if mode == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if checkpointing:
            model.enable_input_require_grads()
        return model

    targets = target_modules(model, adapter.lora_target_modules)
    if adapter.trick_impl == "dojo":
        from llm_tricks.inject import inject_adapters

        replaced = inject_adapters(
            model, targets, r=adapter.lora_rank, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.lora_dropout,
            use_dora=adapter.use_dora, use_rslora=adapter.use_rslora,
        )
        logger.info("llm_tricks: replaced %d linear layers with our %s layers", len(replaced),
                    "DoRA" if adapter.use_dora else "LoRA")
        if checkpointing:
            model.enable_input_require_grads()
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if mode == "qlora":
        # Casts norms to fp32 and enables input grads so checkpointing works through frozen 4-bit layers.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs(config.training) or {"use_reentrant": False},
        )
    elif checkpointing:
        model.enable_input_require_grads()
    lora_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=adapter.lora_rank,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=targets,
        use_dora=adapter.use_dora,
        use_rslora=adapter.use_rslora,
        init_lora_weights=peft_init(adapter.init_lora_weights),
    )
    model = get_peft_model(model, lora_config)
    # Record the name the user gave (a hub id or the embedded alias), not a machine-specific cache path,
    # so the adapter's config points at a base model any machine can load.
    model.peft_config["default"].base_model_name_or_path = config.model.model_name_or_path
    return model


def build_optimizer(model: torch.nn.Module, config: TrainConfig):
    """LoRA+ optimizer when `loraplus_lr_ratio` is set (B learns ratio× faster than A); else None (Trainer's default)."""
    ratio = config.adapter.loraplus_lr_ratio
    if ratio is None or config.model.train_mode == "full":
        return None
    args = config.training
    if config.adapter.trick_impl == "dojo":
        from llm_tricks.lora_plus import loraplus_param_groups

        groups = loraplus_param_groups(model, lr=args.learning_rate, loraplus_lr_ratio=ratio,
                                       loraplus_weight_decay=args.weight_decay)
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                 eps=args.adam_epsilon)
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model, optimizer_cls=torch.optim.AdamW, lr=args.learning_rate, loraplus_lr_ratio=ratio,
        # PEFT takes each group's decay from loraplus_weight_decay (default 0.0), not from weight_decay.
        loraplus_weight_decay=args.weight_decay, weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
