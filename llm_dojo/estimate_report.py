"""The `dojo estimate` report: a table for people, then one JSON line (MiB) for scripts and tests."""

from __future__ import annotations

import json

from llm_dojo.estimate import MIB, MODES

ROWS = (  # (part key, label)
    ("runtime", "runtime (Python, torch, transformers, tokenizer)"),
    ("mapped_checkpoint", "checkpoint pages mapped (4-bit load on a CPU)"),
    ("weights", "base weights"),
    ("adapter", "adapter weights (fp32)"),
    ("gradients", "gradients (trainable parameters)"),
    ("optimizer", "optimizer state"),
    ("activations", "activations, one micro-batch (as decided)"),
    ("logits", "logits at trained positions (at most all)"),
    ("head_gradient", "output-head weight gradient (full training)"),
)


def mib(value: float) -> float:
    """Bytes as MiB with one decimal."""
    return round(value / MIB, 1)


def fits(report: dict, mode: str) -> dict:
    """Whether a mode fits one device's budget: plainly, and with ZeRO-2/3 over the given devices."""
    budget, memory = report["budget"], report["modes"][mode]
    return {"plain": memory["peak"] <= budget, "zero2": memory["zero"][2] <= budget,
            "zero3": memory["zero"][3] <= budget}


def token_reason(report: dict) -> str:
    """Why the micro-batch holds that many tokens (adjust_training_arguments and DojoTrainer's split)."""
    args, max_len = report["config"].training, report["config"].data.max_len
    if args.micro_batch_tokens:
        return f"micro_batch_tokens {args.micro_batch_tokens:,}, rows of up to max_len {max_len:,}"
    if report["device"] == "cpu":
        return f"micro_batch_tokens unset: one max_len row per forward on a CPU, max_len {max_len:,}"
    return f"the whole batch: per_device_train_batch_size {args.per_device_train_batch_size} × max_len {max_len:,}"


def table(report: dict) -> str:
    """The readable part: parameters, the recipe's decisions, parts per mode, ZeRO stages, what fits."""
    counts, modes, chosen = report["counts"], report["modes"], report["train_mode"]
    lines = [f"dojo estimate: {report['model']} · train_mode {chosen} · {report['device']} · {report['dtype']} · "
             f"{report['devices']} device(s) · MiB per device",
             f"parameters: {counts.total:,} (tied tensors once); LoRA on {', '.join(counts.targets)}: "
             f"{counts.lora:,} ({100 * counts.lora / counts.total:.2f}%)",
             f"recipe decides: {modes[chosen]['tokens']:,} tokens per micro-batch ({token_reason(report)}); every "
             f"position is assumed trained for the logits"]
    for mode in MODES:
        m = modes[mode]
        lines.append(f"recipe decides for {mode}: gradient checkpointing {'on' if m['checkpointing'] else 'off'} "
                     f"(activations {mib(m['activations_without']):,.1f} without, {mib(m['activations_with']):,.1f} "
                     f"with)")
    header = "".join(f"{('*' if mode == chosen else '') + mode:>11}" for mode in MODES)
    lines += ["", "peak = runtime + mapped pages + weights + adapter + optimizer"
                  " + max(gradients, activations + logits + head gradient)",
              f"{'part':<50}{header}"]
    for key, label in ROWS:
        lines.append(f"{label:<50}" + "".join(f"{mib(modes[mode]['parts'][key]):>11,.1f}" for mode in MODES))
    lines.append(f"{'peak':<50}"
                 + "".join(f"{mib(modes[mode]['peak']):>11,.1f}" for mode in MODES))
    lines += ["", f"DeepSpeed ZeRO over {report['devices']} device(s), whole batch per step (no token-budget split):"]
    for stage, what in enumerate(("nothing sharded", "optimizer state sharded", "+ gradients", "+ weights")):
        label = f"ZeRO-{stage} ({what})"
        lines.append(f"{label:<50}" + "".join(f"{mib(modes[mode]['zero'][stage]):>11,.1f}" for mode in MODES))
    lines += ["", f"fits in {report['budget'] / 2**30:.1f} GiB per device:"]
    for mode in MODES:
        ok = fits(report, mode)
        lines.append(f"  {mode:<6} {'yes' if ok['plain'] else 'no':<4} (ZeRO-2 over {report['devices']}: "
                     f"{'yes' if ok['zero2'] else 'no'}, ZeRO-3: {'yes' if ok['zero3'] else 'no'})")
    return "\n".join(lines)


def as_json(report: dict) -> str:
    """One line of JSON; every memory number is in MiB (`unit`), parameter counts are exact integers."""
    counts, modes = report["counts"], report["modes"]
    chosen = modes[report["train_mode"]]
    out = {
        "unit": "MiB", "model": report["model"], "train_mode": report["train_mode"], "device": report["device"],
        "dtype": report["dtype"], "devices": report["devices"], "budget": mib(report["budget"]),
        "parameters": {"total": counts.total, "lora": counts.lora, "quantizable": counts.quantizable,
                       "trainable": chosen["trainable"]},
        "lora_targets": report["lora_targets"], "tokens_per_micro_batch": chosen["tokens"],
        "gradient_checkpointing": chosen["checkpointing"], "parts": {k: mib(v) for k, v in chosen["parts"].items()},
        "peak": mib(chosen["peak"]),
        "modes": {mode: {"peak": mib(m["peak"]), "gradient_checkpointing": m["checkpointing"],
                         "parts": {k: mib(v) for k, v in m["parts"].items()},
                         "activations_without_checkpointing": mib(m["activations_without"]),
                         "activations_with_checkpointing": mib(m["activations_with"]),
                         "zero": {str(stage): mib(peak) for stage, peak in m["zero"].items()},
                         "fits": fits(report, mode)} for mode, m in modes.items()},
    }
    return json.dumps(out)


def render(report: dict) -> str:
    """Table, then the JSON line last."""
    return table(report) + "\n" + as_json(report)
