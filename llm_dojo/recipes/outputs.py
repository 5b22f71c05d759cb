"""What every training recipe writes and measures, whatever its stage (SFT today; preference and RL next).

- `save_outputs`: the adapter or model, tokenizer + chat template, `dojo_chat_format.json`, the resolved config,
  `training_summary.json` and `training_loss.png` — all written into a staging folder first, then moved into
  `output_dir` file by file with `os.replace`, so a failure while saving leaves the previous output as it was.
- `heldout_loss`: the mean token loss over a whole held-out set.
- `ListDataset`: a list of ready feature dicts, for the Trainer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from llm_dojo.data.chat_format import ChatFormat

logger = logging.getLogger(__name__)


class ListDataset(torch.utils.data.Dataset):
    """A list of ready feature dicts."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


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
        # Collators may add plain numbers (the flash-attention collator's max_length_q/k): move tensors only.
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss_sum, n = trained_positions_loss(model, batch, num_items_in_batch=1)
        total += float(loss_sum)
        count += n
    model.train(was_training)
    return total / max(1, count)


def save_outputs(
    output_dir: str | Path,
    write_weights: Callable[[Path], None],
    tokenizer,
    chat_format: ChatFormat,
    resolved_config: dict,
    summary: dict,
    card: Optional[str] = None,
) -> Path:
    """Write weights (by `write_weights(folder)`), tokenizer, chat format, config, summary, plot and card — atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        write_weights(staging)
        # The template used in training travels with the weights, so chat/serve render exactly the same text,
        # and the chat format says which token ends a turn (the stop tokens of every inference path).
        tokenizer.chat_template = chat_format.chat_template
        tokenizer.save_pretrained(staging)
        chat_format.save(staging)
        (staging / "dojo_config.yaml").write_text(yaml.safe_dump(plain(resolved_config), sort_keys=False,
                                                                 allow_unicode=True))
        (staging / "training_summary.json").write_text(json.dumps(plain(summary), indent=2))
        plot_loss(summary.get("log_history", []), staging / "training_loss.png")
        if card is not None:  # replaces the library's empty model card
            (staging / "README.md").write_text(card, encoding="utf-8")
        for item in staging.iterdir():  # only now, with everything written, does the previous output change
            destination = output_dir / item.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(item, destination)  # each file appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved to %s", output_dir)
    return output_dir


def adapter_card(config, resolved_config: dict, summary: dict, data) -> str:
    """README.md of the output: what was trained, on what, with which settings, and the results."""
    model, adapter, training = config.model, config.adapter, config.training
    method = {"lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base + LoRA)", "full": "full fine-tuning"}[model.train_mode]
    if model.train_mode != "full" and adapter.use_dora:
        method += " with DoRA"
    lines = [
        f"# {Path(training.output_dir).name}",
        "",
        f"Fine-tuned with LLM-Dojo from **{model.model_name_or_path}** by {method}"
        + ("" if model.train_mode == "full" else f" (r={adapter.lora_rank}, alpha={adapter.lora_alpha:g}, "
                                                 f"targets: {adapter.lora_target_modules}, implementation: "
                                                 f"{adapter.trick_impl})") + ".",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{resolved_config.get('train_data_path')}`: {summary['samples']} samples, "
        f"{data.stats.tokens:,} tokens ({data.stats.trained_tokens / max(1, data.stats.tokens):.1%} trained) |",
        f"| chat format | `{data.chat_format.name}`, a turn ends with `{data.chat_format.terminator}` "
        f"(see `dojo_chat_format.json`) |",
        f"| training | {summary['steps']} steps, learning rate {training.learning_rate:g}, max_len {config.data.max_len}, "
        f"packing {'on' if config.data.packing else 'off'}, seed {training.seed} |",
        f"| final train loss | {_number(summary.get('train_loss'))} |",
        f"| held-out loss | {_number(summary.get('eval_loss'))} |",
        f"| time | {summary['train_seconds']} s, {summary['real_tokens_per_s']} real tokens/s |",
    ]
    if summary.get("interrupted"):
        lines += ["", "**Training was interrupted** (Ctrl-C) before its last step; this is the state at that point."]
    lines += ["", "Use it:", "", "```bash", f"dojo chat --adapter {training.output_dir}",
              f"dojo merge --adapter {training.output_dir} --output {training.output_dir}-merged", "```", ""]
    if model.train_mode != "full":
        lines += ["or with plain PEFT:", "", "```python", "from peft import AutoPeftModelForCausalLM",
                  f"model = AutoPeftModelForCausalLM.from_pretrained({str(training.output_dir)!r})", "```", ""]
    lines += ["All settings: `dojo_config.yaml` (loads again with `dojo train`). Losses by step: `training_loss.png`.",
              ""]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def plain(value):
    """Make a value YAML/JSON-safe (enums, tensors, paths → plain types)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if hasattr(value, "value"):
        return plain(value.value)
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


REWARD_CURVES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "reward")  # the last: stage grpo's mean reward of the sampled completions


def plot_loss(log_history: list[dict], path: Path) -> None:
    """training_loss.png: the logged training (and eval) loss by step; for preference stages, the rewards of the
    chosen and rejected answers, their margin and the share of pairs ranked right, in a second panel; for grpo,
    the mean reward of the sampled completions (and the held-out greedy reward) there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log_history if "loss" in e]
    losses = [e["loss"] for e in log_history if "loss" in e]
    rewards = {name: [(e["step"], e[name]) for e in log_history if name in e and "loss" in e]
               for name in REWARD_CURVES}
    rewards = {name: points for name, points in rewards.items() if points}
    heldout_reward = [(e["step"], e["eval_reward"]) for e in log_history if "eval_reward" in e]
    if heldout_reward:
        rewards["held-out reward (greedy)"] = heldout_reward
    fig, axes = plt.subplots(1, 2 if rewards else 1, figsize=(11 if rewards else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, losses, marker="o", label="train loss")
    eval_points = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if eval_points:
        ax.plot(*zip(*eval_points), marker="s", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LLM-Dojo training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if rewards:
        reward_ax = axes[0][1]
        for name, points in rewards.items():
            if name != "rewards/accuracies":
                reward_ax.plot(*zip(*points), marker=".", label=name)
        reward_ax.set_xlabel("step")
        reward_ax.set_ylabel("reward" if "reward" in rewards else "reward (β · log-ratio)")
        reward_ax.set_title("rewards")
        reward_ax.grid(alpha=0.3)
        if "rewards/accuracies" in rewards:  # a share, on its own scale
            share_ax = reward_ax.twinx()
            share_ax.plot(*zip(*rewards["rewards/accuracies"]), color="grey", linestyle="--",
                          label="rewards/accuracies")
            share_ax.set_ylim(-0.05, 1.05)
            share_ax.set_ylabel("pairs ranked right")
            share_ax.legend(loc="lower right")
        reward_ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
