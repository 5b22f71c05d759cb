"""Configuration: dataclasses parsed by `transformers.HfArgumentParser` from YAML plus `key=value` overrides.

One flat namespace, as in the original LLM-Dojo: every key of every dataclass below, and every
`transformers.TrainingArguments` field, may appear at the top level of the YAML file or on the command line.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional

from transformers import HfArgumentParser, TrainingArguments

from llm_dojo.config_io import ConfigError, parse_overrides, read_yaml  # noqa: F401 (ConfigError is re-exported)
from llm_dojo.data.sources import data_entries


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to start from and how to load it."""

    model_name_or_path: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "hub id, local folder, or the embedded alias 'smollm2-135m-instruct'"},
    )
    train_mode: Literal["lora", "qlora", "full"] = field(
        default="lora", metadata={"help": "lora | qlora (4-bit NF4 base + LoRA) | full (every weight trained)"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "run code shipped with the model (off by default)"})
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={"help": "unset: per-sample attention (dojo_packed) for packed rows on a CPU, else transformers' "
                          "choice | sdpa | eager | flash_attention_2 (GPU + flash-attn package) | dojo_packed"},
    )
    model_dtype: str = field(default="auto", metadata={"help": "auto (bf16 on a capable GPU, else fp32) | bf16 | fp16 | fp32"})


@dataclass
class AdapterArguments:
    """LoRA-family settings (ignored when train_mode is full)."""

    lora_rank: int = field(default=16, metadata={"help": "rank r of the low-rank update"})
    lora_alpha: float = field(default=32, metadata={"help": "scale numerator: the update is scaled by alpha/r"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter's input"})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={"help": "'all-linear' (every linear layer but the output head) or a comma-separated list"},
    )
    use_dora: bool = field(default=False, metadata={"help": "DoRA: learn a magnitude and a direction (arXiv:2402.09353)"})
    use_rslora: bool = field(default=False, metadata={"help": "rsLoRA: scale by alpha/sqrt(r) (arXiv:2312.03732)"})
    init_lora_weights: str = field(
        default="default", metadata={"help": "default | gaussian | pissa | pissa_niter_N | olora (PEFT's init options)"}
    )
    loraplus_lr_ratio: Optional[float] = field(
        default=None, metadata={"help": "LoRA+: learning rate of B = lr × ratio (usual 16; arXiv:2402.12354)"}
    )
    trick_impl: Literal["peft", "dojo"] = field(
        default="peft", metadata={"help": "peft (library) or dojo (our from-scratch layers in llm_tricks/)"}
    )


@dataclass
class DataArguments:
    """Where the data is and how conversations become tokens and labels."""

    train_data_path: Optional[str] = field(
        default=None, metadata={"help": "jsonl/json/parquet file, a folder of them, or several joined by commas"}
    )
    train_data_ratios: Optional[str] = field(
        default=None, metadata={"help": "mix the comma-separated sources: one factor each, e.g. '1,0.5' (0.5 = half)"}
    )
    eval_data_path: Optional[str] = field(default=None, metadata={"help": "held-out data in the same formats"})
    eval_after_training: Optional[str] = field(
        default=None, metadata={"help": "after training, answer these records (jsonl or comma list, same formats) and "
                                        "write loss and answer metrics to output_dir/eval (dojo eval)"}
    )
    template_name: str = field(
        default="auto", metadata={"help": "auto (the tokenizer's own chat template) or a registry name (dojo template list)"}
    )
    dataset_format: Literal["auto", "alpaca", "sharegpt", "messages", "completion"] = field(
        default="auto", metadata={"help": "record format; auto detects it per record"}
    )
    max_len: int = field(default=1024, metadata={"help": "maximum tokens per sample (longer samples are truncated)"})
    mask_history: bool = field(default=False, metadata={"help": "train only the last assistant turn"})
    skip_invalid: bool = field(default=False, metadata={"help": "skip malformed records (counted) instead of stopping"})
    packing: bool = field(default=True, metadata={"help": "pack samples into rows without cross-sample attention"})
    max_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N records (quick runs)"})
    val_set_size: float = field(
        default=0, metadata={"help": "hold out this share (below 1) or number of training samples for evaluation"}
    )
    data_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "where encoded data is cached (default $DOJO_CACHE_DIR or "
                                        "~/.cache/llm_dojo/encoded); `dojo prepare` fills it ahead of time"}
    )
    dataset_num_proc: Optional[int] = field(
        default=None, metadata={"help": "processes that encode the data (default: the CPU count, at most 8)"}
    )


STAGES = ("sft", "dpo", "simpo", "orpo", "kto", "grpo", "distill")
# β when the config does not set it: the values the papers (and TRL) start from. SimPO's β scales per-token means,
# which differ by little, hence its larger value.
# GRPO's β weighs a KL penalty that recent work (DAPO, Dr.GRPO) and TRL leave off; distill's is the JSD mixture.
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1, "grpo": 0.0, "distill": 0.5}


@dataclass
class StageArguments:
    """Which training stage runs (sft, or preference training on chosen/rejected pairs) and its loss settings."""

    stage: Literal["sft", "dpo", "simpo", "orpo", "kto", "grpo", "distill"] = field(
        default="sft", metadata={"help": "sft | dpo | simpo | orpo | kto (preference stages: docs/preference.md) | "
                                         "grpo | distill (RL and distillation: docs/rl.md)"}
    )
    beta: Optional[float] = field(
        default=None, metadata={"help": "preference strength β (unset: dpo 0.1, simpo 2.0, orpo 0.1, kto 0.1); grpo: "
                                        "weight of the KL to the reference (unset: 0); distill: the generalised JSD's "
                                        "mixture β (0 forward KL, 1 reverse KL; unset: 0.5)"}
    )
    dpo_loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "apo_zero", "apo_down"] = field(
        default="sigmoid", metadata={"help": "DPO variant (llm_tricks/preference/README.md)"}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "share of pairs assumed mislabelled (dpo sigmoid/robust, simpo)"}
    )
    gamma_beta_ratio: float = field(default=0.5, metadata={"help": "SimPO's target margin γ/β"})
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "dpo/kto: score every pair with the reference once before training"}
    )
    desirable_weight: float = field(default=1.0, metadata={"help": "kto: weight of desirable examples"})
    undesirable_weight: float = field(default=1.0, metadata={"help": "kto: weight of undesirable examples"})

    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.stage, 0.1)


@dataclass
class RLArguments:
    """stage: grpo (sampled completions scored by reward functions) and stage: distill (a teacher's distribution)."""

    num_generations: int = field(default=8, metadata={"help": "completions sampled per prompt (one group)"})
    max_completion_length: int = field(default=256, metadata={"help": "most tokens per sampled completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the completions"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the completions"})
    num_iterations: int = field(
        default=1, metadata={"help": "optimizer steps per generated batch (>1: clipped importance ratios)"}
    )
    epsilon: float = field(default=0.2, metadata={"help": "clip range below 1 of the ratio (and above, unless "
                                                          "epsilon_high is set)"})
    epsilon_high: Optional[float] = field(default=None, metadata={"help": "clip range above 1 (DAPO's clip-higher: 0.28)"})
    rl_loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = field(
        default="dapo", metadata={"help": "how token losses are averaged (llm_tricks/rl/README.md)"}
    )
    advantage: Literal["grpo", "rloo", "kd"] = field(
        default="grpo", metadata={"help": "grpo (group mean and std) | rloo (leave-one-out) | kd (teacher log-prob "
                                          "minus the policy's, per token, no rewards)"}
    )
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group", metadata={"help": "grpo advantages divided by the group's std, the batch's, or nothing "
                                           "(Dr.GRPO)"}
    )
    reward_funcs: Optional[str] = field(
        default=None, metadata={"help": "comma-separated reward functions: format | math_answer | length | "
                                        "think_format | package.module:function"}
    )
    reward_weights: Optional[str] = field(default=None, metadata={"help": "comma-separated weights (default all 1)"})
    reward_format_pattern: Optional[str] = field(
        default=None, metadata={"help": "the `format` reward's regular expression (the whole completion must match)"}
    )
    overlong_cache: Optional[int] = field(
        default=None, metadata={"help": "the `length` reward: the last N tokens before max_completion_length are "
                                        "penalised linearly (DAPO's soft over-long penalty; default a quarter)"}
    )
    system_prompt: Optional[str] = field(
        default=None, metadata={"help": "a system message put before every prompt that has none"}
    )
    teacher_model: Optional[str] = field(
        default=None, metadata={"help": "a local teacher (model folder or hub name) for advantage: kd, kd_coef or "
                                        "stage: distill"}
    )
    teacher_adapter: Optional[str] = field(default=None, metadata={"help": "an adapter folder put on the teacher"})
    teacher_url: Optional[str] = field(
        default=None, metadata={"help": "an OpenAI-compatible server of the teacher (e.g. `dojo serve`, vLLM): its "
                                        "/v1/completions scores the sampled tokens (echo + logprobs)"}
    )
    kd_coef: float = field(
        default=0.0, metadata={"help": "grpo/rloo: add kd_coef × (teacher log-prob − policy log-prob) to each "
                                       "token's advantage (needs a teacher); advantage kd uses 1 when unset"}
    )
    lmbda: float = field(default=0.5, metadata={"help": "distill: share of batches whose answers the student samples "
                                                        "itself (on-policy); the rest use the data's answers"})
    eval_prompts_path: Optional[str] = field(
        default=None, metadata={"help": "grpo: held-out prompts whose mean reward (greedy) is measured before and "
                                        "after training"}
    )


@dataclass
class DojoTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with defaults that suit chat fine-tuning on one machine."""

    output_dir: str = field(default="outputs/run", metadata={"help": "where the adapter/model and logs are written"})
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | wandb | …"})
    logging_steps: float = field(default=5, metadata={"help": "log every N steps"})
    save_strategy: str = field(default="no", metadata={"help": "no | steps | epoch (checkpoints during training)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep our columns (position_ids)"})
    micro_batch_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "most real tokens per forward/backward; bigger batches are split into micro-batches of "
                          "whole rows and accumulated (same update). Unset: one max_len row on a CPU, no split on a "
                          "GPU"},
    )
    early_stopping_patience: Optional[int] = field(
        default=None, metadata={"help": "stop after this many evaluations without a better eval_loss (needs held-out "
                                        "data and eval_strategy steps|epoch; the best checkpoint is loaded at the end)"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a trained output already in output_dir (else the run stops)"}
    )


CONFIG_CLASSES = (ModelArguments, AdapterArguments, DataArguments, StageArguments, RLArguments, DojoTrainingArguments)

# transformers 5.x renamed gradient checkpointing to activation checkpointing; the old names stay as aliases that
# TrainingArguments copies over only when it is constructed. The Trainer reads the new names, so a recipe that
# decides checkpointing afterwards must set both (older 5.x releases have only the old ones).
CHECKPOINTING_KEYS = ("gradient_checkpointing", "activation_checkpointing")


def checkpointing_on(args: TrainingArguments) -> bool:
    """Whether this run recomputes activations in the backward pass (either name)."""
    return bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)


def checkpointing_kwargs(args: TrainingArguments) -> dict:
    """The kwargs for `gradient_checkpointing_enable`, under whichever name the user wrote them."""
    return dict(getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {})


def set_checkpointing(args: TrainingArguments, on: bool, kwargs: Optional[dict] = None) -> None:
    """Turn checkpointing on or off after construction, under both names so the Trainer sees it."""
    args.gradient_checkpointing = on
    if hasattr(args, "activation_checkpointing"):
        args.activation_checkpointing = on
    if kwargs is not None:
        args.gradient_checkpointing_kwargs = kwargs
        if hasattr(args, "activation_checkpointing_kwargs"):
            args.activation_checkpointing_kwargs = kwargs


@dataclass
class TrainConfig:
    """Every setting of a training run, grouped."""

    model: ModelArguments
    adapter: AdapterArguments
    data: DataArguments
    training: DojoTrainingArguments
    # Keys the user wrote (config file or command line): a setting the recipe may decide itself, such as
    # gradient_checkpointing, is only decided when it is not among them.
    explicit_keys: frozenset = frozenset()
    stage: StageArguments = field(default_factory=StageArguments)
    rl: RLArguments = field(default_factory=RLArguments)

    def to_flat_dict(self) -> dict:
        """All fields as one flat dict of plain values (the resolved config written next to the adapter)."""
        flat: dict = {}
        for part in (self.model, self.adapter, self.data, self.stage, self.rl):
            flat.update({f.name: getattr(part, f.name) for f in fields(part)})
        training = self.training.to_dict()
        flat.update({k: v for k, v in training.items() if not k.startswith("_")})
        return flat


def config_for_saving(config: TrainConfig) -> dict:
    """The flat config written next to the outputs, with local data paths made absolute so it loads from anywhere."""
    flat = config.to_flat_dict()
    for key in DATA_PATH_KEYS:
        if isinstance(flat.get(key), str) and flat[key].strip():
            flat[key] = ",".join(str(Path(e).resolve()) if Path(e).expanduser().exists() else e
                                 for e in data_entries(flat[key]))
    return flat


class _RaisingParser(HfArgumentParser):
    """argparse exits the process on a bad value; we want an exception that the caller can show and test."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ConfigError(message.replace("--", ""))


def known_keys() -> set[str]:
    """Every key a config may use."""
    return {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}


def unknown_keys(values: dict) -> list[str]:
    """The keys of `values` no config section knows, each with its closest known key when there is one."""
    valid = known_keys()
    problems = []
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            problems.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return problems


def _to_argv(values: dict) -> list[str]:
    """Turn {key: value} into argparse tokens (keys already checked by unknown_keys)."""
    argv: list[str] = []
    for key, value in values.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue  # None and [] mean "not set" (a saved config writes TrainingArguments' empty lists)
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (list, tuple)):
            argv.append(f"--{key}")
            argv.extend(str(v) for v in value)
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        argv.append(f"--{key}={value}")  # one token, so a negative number is not read as an option
    return argv


def load_config(config_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Build the TrainConfig from an optional YAML file and `key=value` overrides (overrides win).

    Data paths written in a config file are read relative to the file's folder; on the command line, relative to
    the working directory. Every unknown key is reported at once.
    """
    origin = config_path or "config"
    values = read_yaml(config_path) if config_path else {}
    cli_values = parse_overrides(overrides or [])
    problems = [f"{config_path}: unknown key {k}" for k in unknown_keys(values)]
    problems += [f"command line: unknown key {k}" for k in unknown_keys(cli_values)]
    if problems:
        raise ConfigError("; ".join(problems) + ". Run `dojo train --help` for the list.")
    if config_path:
        values = paths_relative_to(values, Path(config_path).resolve().parent)
    decided = {}
    if "use_cpu" not in values and "use_cpu" not in cli_values and several_processes_without_gpu():
        # transformers sets up distributed training on a CPU-only machine only with use_cpu: without it every
        # process of `torchrun` trained alone on all the data ("parallel_mode != ParallelMode.DISTRIBUTED").
        decided["use_cpu"] = True
    decided.update(evaluation_defaults({**values, **cli_values}))
    parser = _RaisingParser(CONFIG_CLASSES)
    try:
        model_args, adapter_args, data_args, stage_args, rl_args, training_args = parser.parse_args_into_dataclasses(
            args=_to_argv(values) + _to_argv(cli_values) + _to_argv(decided))
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # raised by TrainingArguments.__post_init__ for inconsistent values
        raise ConfigError(f"{origin}: {err}") from None
    config = TrainConfig(model_args, adapter_args, data_args, training_args, frozenset(values) | frozenset(cli_values),
                         stage_args, rl_args)
    validate(config, origin)
    return config


def evaluation_defaults(written: dict) -> dict:
    """With held-out data the best checkpoint is tracked by eval_loss; early stopping loads it at the end.

    Decided before TrainingArguments is built, so its own checks (save and eval strategies must match when the
    best model is loaded at the end) still run and name the setting to change.
    """
    decided = {}
    held_out = written.get("val_set_size") or written.get("eval_data_path")
    if written.get("early_stopping_patience") and (not held_out or str(written.get("eval_strategy", "no")) == "no"):
        raise ConfigError("'early_stopping_patience' needs held-out data (val_set_size or eval_data_path) and "
                          "eval_strategy: steps or epoch")
    if held_out and "metric_for_best_model" not in written:
        decided["metric_for_best_model"] = "eval_loss"
    if written.get("early_stopping_patience") and "load_best_model_at_end" not in written:
        decided["load_best_model_at_end"] = True
    return decided


def several_processes_without_gpu() -> bool:
    """Launched as one of several processes (torchrun, accelerate launch) on a machine with no GPU."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


DATA_PATH_KEYS = ("train_data_path", "eval_data_path", "eval_prompts_path", "eval_after_training")


def paths_relative_to(values: dict, folder: Path) -> dict:
    """Data paths of a config file, each comma-separated entry resolved against the file's folder.

    An entry that exists only relative to the working directory (configs written before this rule) is kept as it
    is, with a warning; hub dataset names (nothing local by that name) are left alone.
    """
    resolved = dict(values)
    for key in DATA_PATH_KEYS:
        if not isinstance(values.get(key), str) or not values[key].strip():
            continue
        entries = []
        for entry in data_entries(values[key]):
            candidate = Path(entry).expanduser()
            beside_config = folder / candidate
            if candidate.is_absolute() or not beside_config.exists():
                if not candidate.is_absolute() and candidate.exists():
                    logger.warning("%s '%s' is read relative to the working directory; write paths in a config "
                                   "relative to the config file's folder", key, entry)
                entries.append(entry)
            else:
                entries.append(str(beside_config))
        resolved[key] = ",".join(entries)
    return resolved


def validate(config: TrainConfig, origin: str) -> None:
    """Checks argparse cannot express: ranges and combinations."""
    data, adapter = config.data, config.adapter
    if not data.train_data_path:
        raise ConfigError(f"{origin}: 'train_data_path' is required (a jsonl/json/parquet file or folder)")
    args = config.training
    if not args.learning_rate > 0:
        raise ConfigError(f"{origin}: 'learning_rate' must be positive, got {args.learning_rate}")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise ConfigError(f"{origin}: 'num_train_epochs' must be positive (or set max_steps), got {args.num_train_epochs}")
    if args.micro_batch_tokens is not None and args.micro_batch_tokens < 16:
        raise ConfigError(f"{origin}: 'micro_batch_tokens' must be at least 16 (or unset), got {args.micro_batch_tokens}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, key) < 1:
            raise ConfigError(f"{origin}: '{key}' must be at least 1, got {getattr(args, key)}")
    if args.early_stopping_patience is not None:
        if args.early_stopping_patience < 1:
            raise ConfigError(f"{origin}: 'early_stopping_patience' must be at least 1, got {args.early_stopping_patience}")
    if data.val_set_size < 0:
        raise ConfigError(f"{origin}: 'val_set_size' must be a share below 1 or a count of samples, got {data.val_set_size}")
    if data.dataset_num_proc is not None and data.dataset_num_proc < 1:
        raise ConfigError(f"{origin}: 'dataset_num_proc' must be at least 1 (or unset), got {data.dataset_num_proc}")
    if data.max_len < 16:
        raise ConfigError(f"{origin}: 'max_len' must be at least 16, got {data.max_len}")
    if adapter.lora_rank < 1:
        raise ConfigError(f"{origin}: 'lora_rank' must be a positive integer, got {adapter.lora_rank}")
    if not 0.0 <= adapter.lora_dropout < 1.0:
        raise ConfigError(f"{origin}: 'lora_dropout' must be in [0, 1), got {adapter.lora_dropout}")
    if adapter.loraplus_lr_ratio is not None and adapter.loraplus_lr_ratio <= 0:
        raise ConfigError(f"{origin}: 'loraplus_lr_ratio' must be positive, got {adapter.loraplus_lr_ratio}")
    stage = config.stage
    if stage.stage in ("grpo", "distill"):
        validate_rl(config, origin)
    elif stage.beta is not None and not stage.beta > 0:
        raise ConfigError(f"{origin}: 'beta' must be positive, got {stage.beta}")
    if stage.dpo_loss_type == "robust" and not 0 <= stage.label_smoothing < 0.5:
        raise ConfigError(f"{origin}: 'label_smoothing' must be in [0, 0.5) for dpo_loss_type robust, "
                          f"got {stage.label_smoothing}")
    if not 0 <= stage.label_smoothing < 1:
        raise ConfigError(f"{origin}: 'label_smoothing' must be in [0, 1), got {stage.label_smoothing}")
    if stage.precompute_ref_log_probs and stage.stage not in ("dpo", "kto"):
        raise ConfigError(f"{origin}: 'precompute_ref_log_probs' applies to dpo and kto (stage {stage.stage} "
                          f"uses no reference model)")
    if stage.stage != "sft" and adapter.trick_impl == "dojo":
        raise ConfigError(f"{origin}: preference stages use PEFT adapters (the reference is the base with the adapter "
                          f"disabled); set trick_impl: peft")
    if adapter.trick_impl == "dojo":
        if config.model.train_mode != "lora":
            raise ConfigError(f"{origin}: 'trick_impl: dojo' supports train_mode 'lora' only (got '{config.model.train_mode}')")
        if adapter.init_lora_weights != "default":
            raise ConfigError(f"{origin}: 'trick_impl: dojo' uses the default init; set init_lora_weights: default")


def validate_rl(config: TrainConfig, origin: str) -> None:
    """Ranges and combinations of the grpo and distill settings."""
    stage, rl = config.stage, config.rl
    if stage.beta is not None and stage.beta < 0:
        raise ConfigError(f"{origin}: 'beta' must be at least 0, got {stage.beta}")
    if stage.stage == "distill" and stage.beta is not None and stage.beta > 1:
        raise ConfigError(f"{origin}: 'beta' of stage distill is a mixture weight in [0, 1], got {stage.beta}")
    for key, low in (("num_generations", 2), ("max_completion_length", 1), ("num_iterations", 1)):
        if getattr(rl, key) < low:
            raise ConfigError(f"{origin}: '{key}' must be at least {low}, got {getattr(rl, key)}")
    if not rl.temperature > 0:
        raise ConfigError(f"{origin}: 'temperature' must be positive (completions are sampled), got {rl.temperature}")
    if not 0 < rl.top_p <= 1:
        raise ConfigError(f"{origin}: 'top_p' must be in (0, 1], got {rl.top_p}")
    if not 0 <= rl.epsilon < 1 or (rl.epsilon_high is not None and rl.epsilon_high < 0):
        raise ConfigError(f"{origin}: 'epsilon' must be in [0, 1) and 'epsilon_high' at least 0")
    if not 0 <= rl.lmbda <= 1:
        raise ConfigError(f"{origin}: 'lmbda' must be in [0, 1], got {rl.lmbda}")
    if rl.teacher_model and rl.teacher_url:
        raise ConfigError(f"{origin}: set either 'teacher_model' or 'teacher_url', not both")
    has_teacher = bool(rl.teacher_model or rl.teacher_url)
    if stage.stage == "distill" and not rl.teacher_model:
        raise ConfigError(f"{origin}: stage distill needs 'teacher_model' (its whole distribution is compared; a "
                          f"server's top log-probs are not enough)")
    if stage.stage == "grpo":
        if (rl.advantage == "kd" or rl.kd_coef) and not has_teacher:
            raise ConfigError(f"{origin}: advantage kd and kd_coef need a teacher: set 'teacher_model' or 'teacher_url'")
        if rl.advantage != "kd" and not rl.reward_funcs:
            raise ConfigError(f"{origin}: stage grpo needs 'reward_funcs' (e.g. format, math_answer, length, "
                              f"think_format or package.module:function), or advantage: kd with a teacher")
        if rl.advantage == "rloo" and rl.num_generations < 2:
            raise ConfigError(f"{origin}: advantage rloo needs num_generations of at least 2")
    if config.adapter.trick_impl == "dojo":
        raise ConfigError(f"{origin}: stage {stage.stage} uses PEFT adapters; set trick_impl: peft")


def config_help() -> str:
    """A short listing of LLM-Dojo's own keys (TrainingArguments keys are documented by transformers)."""
    lines = []
    for cls in CONFIG_CLASSES[:-1]:
        lines.append(f"[{cls.__name__}] {cls.__doc__}")
        for f in fields(cls):
            lines.append(f"  {f.name} (default {f.default!r}): {f.metadata.get('help', '')}")
    lines.append("[TrainingArguments] every transformers.TrainingArguments field, e.g. learning_rate, num_train_epochs,")
    lines.append("  per_device_train_batch_size, gradient_accumulation_steps, gradient_checkpointing, seed, bf16 …")
    return "\n".join(lines)
