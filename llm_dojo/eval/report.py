"""What `dojo eval --output DIR` writes: metrics.json, answers.jsonl, report.md and PNG charts — each file atomically.

With a comparison ("before" vs "after"), report.md puts every metric side by side with the difference, and a
forgetting check lists the general-knowledge metrics (the `general` group and every lm-eval task) with whether
they held.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

from llm_dojo.eval.metrics import METRICS

# Metrics where lower is better; every other metric is better higher.
LOWER_IS_BETTER = ("loss", "perplexity")
# Counts, not scores: shown in the table, not charted or judged.
COUNTS = ("answers", "loss_tokens", "loss_samples", "sample_len")
GENERAL_GROUP = "general"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_metrics(run_dir: str | Path) -> dict:
    """The metrics of an earlier `dojo eval --output RUN_DIR` (its metrics.json)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"--compare {run_dir}: no metrics.json there; give the --output folder of an earlier "
                                f"`dojo eval`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["metrics"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path}: not a dojo eval metrics file ({error})") from None


def metric_order(keys) -> list[str]:
    """Loss first, then answer metrics (overall, then per group), lm-eval tasks, counts last."""
    def rank(key: str):
        name = key.rpartition("/")[2]
        kind = (0 if name in LOWER_IS_BETTER else 3 if key.startswith("lm_eval/") else 4 if name in COUNTS else
                1 if "/" not in key else 2)
        return kind, key.rpartition("/")[0] if kind != 3 else key, METRICS.index(name) if name in METRICS else 9, key
    return sorted(keys, key=rank)


def _show(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 2):
        return f"{value:,.0f}"
    return f"{value:.4f}"


def _cell(text) -> str:
    """One table cell: on one line, pipes escaped, at most 160 characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= 160 else text[:159] + "…"


def better(key: str, delta: float) -> bool:
    return delta < 0 if key.rpartition("/")[2] in LOWER_IS_BETTER else delta > 0


def forgetting_check(before: dict, after: dict) -> list[tuple[str, float, float, bool]]:
    """(metric, before, after, held) for general-knowledge metrics: group `general` and every lm-eval accuracy."""
    rows = []
    for key in metric_order(set(before) & set(after)):
        group, _, name = key.rpartition("/")
        general = (group == GENERAL_GROUP and name in METRICS) or (key.startswith("lm_eval/") and name in ("acc",
                                                                                                          "acc_norm"))
        if general:
            rows.append((key, before[key], after[key], after[key] >= before[key]))
    return rows


def markdown(metrics: dict, rows: list[dict], info: dict, before: Optional[dict] = None,
             labels: tuple[str, str] = ("before", "after"), before_rows: Optional[list[dict]] = None) -> str:
    """report.md: settings, the metrics (side by side with differences when compared), the answers."""
    lines = ["# dojo eval report", ""]
    lines += [f"- {key}: `{value}`" for key, value in info.items() if value not in (None, "", [])]
    lines += [""]
    if before is None:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_show(metrics[key])} |" for key in metric_order(metrics)]
    else:
        lines += [f"Before: `{labels[0]}` · after: `{labels[1]}`. Loss and perplexity are better lower, every other "
                  f"score higher (all answer scores are shares in [0, 1]).", "",
                  "| metric | before | after | difference |", "|---|---|---|---|"]
        for key in metric_order(set(metrics) | set(before)):
            old, new = before.get(key), metrics.get(key)
            delta = "–"
            if isinstance(old, (int, float)) and isinstance(new, (int, float)):
                sign = "+" if new - old > 0 else ""
                mark = "" if key.rpartition("/")[2] in COUNTS or new == old else (" ✓" if better(key, new - old)
                                                                                 else " ✗")
                delta = f"{sign}{new - old:.4f}{mark}"
            lines.append(f"| {key} | {_show(old)} | {_show(new)} | {delta} |")
        checks = forgetting_check(before, metrics)
        lines += ["", "## Forgetting check (general knowledge)", ""]
        if checks:
            lines += [f"- {key}: {old:.4f} → {new:.4f} — {'held' if held else f'LOWER by {old - new:.4f}'}"
                      for key, old, new, held in checks]
        else:
            lines += ["No general-knowledge metric in both runs: give records with `\"group\": \"general\"` or an "
                      "lm-eval task (`--tasks dojo_mini_mc`)."]
    if rows:
        paired = before_rows if before_rows and len(before_rows) == len(rows) else None
        header = ["group", "prompt"] + (["answer before", "contains"] if paired else []) + ["answer", "contains",
                                                                                           "rouge_l"]
        lines += ["", "## Answers", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for index, row in enumerate(rows):
            cells = [row.get("group") or "", row["prompt"]]
            if paired:
                cells += [paired[index]["answer"], _show(paired[index].get("contains"))]
            cells += [row["answer"]] + [_show(row.get(name)) for name in ("contains", "rouge_l")]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: Path, metrics: dict, before: Optional[dict] = None, labels: tuple[str, str] = ("before", "after")) -> None:
    """metrics.png: every score in [0, 1] as a bar (before and after side by side when compared)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in metric_order(metrics) if k.rpartition("/")[2] not in LOWER_IS_BETTER + COUNTS
            and isinstance(metrics[k], (int, float)) and (before is None or isinstance(before.get(k), (int, float)))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4.5))
    positions = range(len(keys))
    if before is None:
        ax.bar(positions, [metrics[k] for k in keys], color="tab:blue")
    else:
        ax.bar([p - 0.2 for p in positions], [before[k] for k in keys], width=0.4, label=labels[0], color="tab:grey")
        ax.bar([p + 0.2 for p in positions], [metrics[k] for k in keys], width=0.4, label=labels[1], color="tab:blue")
        ax.legend()
    ax.set_xticks(list(positions))
    ax.set_xticklabels(keys, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (share, 0–1)")
    ax.set_title("dojo eval" + (f": {labels[0]} vs {labels[1]}" if before is not None else ""))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def write_report(output_dir: str | Path, metrics: dict, rows: list[dict], info: dict, before: Optional[dict] = None,
                 labels: tuple[str, str] = ("before", "after"), before_rows: Optional[list[dict]] = None) -> Path:
    """metrics.json, answers.jsonl, report.md and metrics.png into output_dir (each written atomically)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is a file; give a folder")
    record = {"metrics": metrics, **info}
    if before is not None:
        record["compare"] = {"label": labels[0], "metrics": before,
                             "difference": {k: metrics[k] - before[k] for k in metrics
                                            if isinstance(metrics[k], (int, float))
                                            and isinstance(before.get(k), (int, float))}}
    write_json(output_dir / "metrics.json", record)
    if rows:
        write_text(output_dir / "answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if before_rows:
        write_text(output_dir / "answers_before.jsonl",
                   "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in before_rows))
    write_text(output_dir / "report.md", markdown(metrics, rows, info, before, labels, before_rows))
    plot(output_dir / "metrics.png", metrics, before, labels)
    return output_dir
