"""`dojo eval`: did fine-tuning help? Held-out loss, answer metrics and lm-evaluation-harness tasks, before vs after.

    dojo eval --adapter outputs/run --data heldout.jsonl [--metrics loss,exact_match,contains,rouge_l,chrf]
              [--tasks dojo_mini_mc,path/to/task.yaml] [--server http://127.0.0.1:8000] [--output DIR]
              [--compare RUN_DIR | --compare-model M [--compare-adapter DIR]]

--data: records in the training formats; the reference is `output` or the last assistant turn. On them:
  loss, perplexity   over the trained tokens, with the training masks, chat format and max_len saved with the
                     adapter (equal to `dojo train`'s held-out loss for the same data)
  exact_match, contains, rouge_l, chrf   on greedy answers (batched), each a share in [0, 1]; optional record
                     fields `keywords` (contains: any of them) and `group` (every metric also per group)
--tasks: lm-evaluation-harness tasks by name or task YAML path, in-process on the loaded model (adapter unmerged),
  or with --server against a running `dojo serve`. `dojo_mini_mc` is bundled (20 questions, runs offline).
--compare RUN_DIR: an earlier `dojo eval --output` folder is "before", this run "after"; --compare-model/-adapter
  evaluates a second model in the same call instead (the adapter's own base is not loaded twice: the adapter is
  switched off). The report puts every metric side by side with the difference, and a forgetting check on the
  `general` group and the lm-eval tasks.

The last line printed is one JSON object of all metrics; --output writes metrics.json, answers.jsonl, report.md
and metrics.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional

import yaml

from llm_dojo.eval.metrics import METRICS
from llm_dojo.eval.records import EvalRecord, read_eval_records

logger = logging.getLogger(__name__)

ALL_METRICS = ("loss",) + METRICS
DEFAULT_MAX_LEN = 1024  # DataArguments' default, for models that were not trained by dojo


def build_parser() -> argparse.ArgumentParser:
    from llm_dojo.infer.common import add_model_arguments

    parser = argparse.ArgumentParser(prog="dojo eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data", help="records with reference answers (jsonl/json/parquet, a folder, a comma list)")
    parser.add_argument("--metrics", default=",".join(ALL_METRICS),
                        help=f"comma list of {', '.join(ALL_METRICS)} (default: all; loss includes perplexity)")
    parser.add_argument("--tasks", help="comma list of lm-evaluation-harness task names or task .yaml paths")
    parser.add_argument("--server", help="run --tasks against this OpenAI-compatible server (e.g. a `dojo serve` "
                                         "at http://127.0.0.1:8000) instead of in-process")
    parser.add_argument("--limit", type=int, help="use only the first N records (and N documents per task)")
    parser.add_argument("--output", type=Path, help="folder for metrics.json, answers.jsonl, report.md, metrics.png")
    parser.add_argument("--compare", type=Path, help="an earlier `dojo eval --output` folder: the 'before' run")
    parser.add_argument("--compare-model", help="evaluate this model too, as 'before' (e.g. the adapter's base)")
    parser.add_argument("--compare-adapter", help="...with this adapter")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--system", help="system prompt for records without one (default: the template's)")
    parser.add_argument("--max-len", type=int, help="truncate samples for the loss (default: the training max_len "
                                                    f"saved with the adapter, else {DEFAULT_MAX_LEN})")
    return parser


def parse_metrics(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown metric {unknown[0] if unknown else value!r}; choose from "
                         f"{', '.join(ALL_METRICS)}")
    return names


def training_settings(*folders: Optional[str]) -> dict:
    """max_len, mask_history and dataset_format from the dojo_config.yaml saved with an adapter or model."""
    for folder in folders:
        path = Path(folder) / "dojo_config.yaml" if folder else None
        if path is not None and path.is_file():
            saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return {key: saved[key] for key in ("max_len", "mask_history", "dataset_format") if key in saved}
    return {}


def evaluate(model, tokenizer, chat_format, stop_ids: list[int], records: list[EvalRecord], *,
             metrics: tuple[str, ...] = ALL_METRICS, max_len: int = DEFAULT_MAX_LEN, mask_history: bool = False,
             batch_size: int = 8, max_new_tokens: int = 128, system: Optional[str] = None,
             tasks: Optional[list[str]] = None, limit: Optional[int] = None) -> tuple[dict, list[dict]]:
    """All asked-for metrics of one model on `records` (and lm-eval `tasks` in-process): (flat metrics, answer rows)."""
    from llm_dojo.eval.answers import generate_answers, score_answers
    from llm_dojo.eval.heldout import heldout_metrics

    results: dict = {}
    rows: list[dict] = []
    started = time.time()
    if records and "loss" in metrics:
        results.update(heldout_metrics(model, tokenizer, chat_format, [r.conversation for r in records],
                                       max_len=max_len, mask_history=mask_history, batch_size=batch_size))
    answer_metrics = tuple(name for name in metrics if name in METRICS)
    if records and answer_metrics:
        answers = generate_answers(model, tokenizer, records, stop_ids, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, system=system)
        means, rows = score_answers(records, answers, answer_metrics)
        results.update(means)
    if tasks:
        from llm_dojo.eval.lm_eval_bridge import run_in_process

        results.update(run_in_process(model, tokenizer, tasks, batch_size=batch_size, limit=limit)["metrics"])
    logger.info("evaluated in %.1f s", time.time() - started)
    return results, rows


def main(argv: list[str]) -> int:
    """Entry point of `dojo eval`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.data and not args.tasks:
        parser.error("give --data (records with reference answers), --tasks (lm-eval tasks), or both")
    if args.model is None and args.adapter is None:
        parser.error("give --model, --adapter, or both")
    if args.compare and (args.compare_model or args.compare_adapter):
        parser.error("--compare (an earlier run) and --compare-model/--compare-adapter (a second model) exclude "
                     "each other")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be at least 1")
    # Everything that can fail on the user's input is checked before the model loads.
    metric_names = parse_metrics(args.metrics)
    records = read_eval_records(args.data, limit=args.limit) if args.data else []
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if tasks:
        from llm_dojo.eval.lm_eval_bridge import resolve_tasks, task_manager

        task_manager(*resolve_tasks(tasks))  # unknown names fail here, not after the model load
    before = None
    if args.compare:
        from llm_dojo.eval.report import read_metrics

        before = read_metrics(args.compare)
    if args.output and args.output.exists() and not args.output.is_dir():
        raise NotADirectoryError(f"--output {args.output} is a file; give a folder")

    from llm_dojo.infer.common import load_from_args
    from llm_dojo.models.embedded import resolve_model_path

    needs_weights = bool(records) or (bool(tasks) and not args.server)
    loaded = load_from_args(args, weights=needs_weights)
    saved = training_settings(args.adapter, resolve_model_path(loaded.base))
    options = dict(metrics=metric_names, max_len=args.max_len or saved.get("max_len", DEFAULT_MAX_LEN),
                   mask_history=bool(saved.get("mask_history", False)), batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, system=args.system, limit=args.limit)
    if saved.get("dataset_format", "auto") != "auto" and args.data:
        records = read_eval_records(args.data, saved["dataset_format"], limit=args.limit)
    in_process_tasks = tasks if not args.server else None
    metrics, rows = ({}, []) if not needs_weights else evaluate(
        loaded.model, loaded.tokenizer, loaded.chat_format, loaded.stop_ids, records, tasks=in_process_tasks,
        **options)
    if tasks and args.server:
        from llm_dojo.eval.lm_eval_bridge import run_against_server
        from llm_dojo.models.loading import tokenizer_source

        metrics.update(run_against_server(args.server, tokenizer_source(loaded.base, args.adapter), tasks,
                                          limit=args.limit)["metrics"])

    label = args.adapter or args.model
    before_label, before_rows = str(args.compare) if args.compare else None, None
    if args.compare_model or args.compare_adapter:
        before, before_rows, before_label = evaluate_second(args, loaded, records, in_process_tasks, options)
    info = {"model": loaded.base, "adapter": args.adapter, "data": args.data, "tasks": tasks,
            "server": args.server, "max_len": options["max_len"], "max_new_tokens": args.max_new_tokens}
    if args.output:
        from llm_dojo.eval.report import write_report

        write_report(args.output, metrics, rows, info, before, (before_label or "before", label),
                     before_rows=before_rows)
        logger.info("report written to %s", args.output / "report.md")
    if before is not None:
        print(side_by_side(before, metrics))
    print(json.dumps(metrics, ensure_ascii=False))  # the last line: every metric, for scripts
    return 0


def evaluate_second(args, loaded, records, tasks, options) -> tuple[dict, list[dict], str]:
    """The 'before' model of --compare-model/--compare-adapter; the adapter's own base reuses the loaded weights."""
    from llm_dojo.infer.common import load_from_args
    from llm_dojo.models.embedded import resolve_model_path

    compare_base = args.compare_model or None
    same_base = (args.adapter and not args.compare_adapter and compare_base is not None
                 and resolve_model_path(compare_base) == loaded.base and hasattr(loaded.model, "disable_adapter"))
    if same_base:
        logger.info("'before' = the adapter's base model: the adapter is switched off, nothing is loaded again")
        with loaded.model.disable_adapter():
            metrics, rows = evaluate(loaded.model, loaded.tokenizer, loaded.chat_format, loaded.stop_ids, records,
                                     tasks=tasks, **options)
        return metrics, rows, compare_base
    second = argparse.Namespace(**{**vars(args), "model": args.compare_model, "adapter": args.compare_adapter})
    other = load_from_args(second)
    metrics, rows = evaluate(other.model, other.tokenizer, other.chat_format, other.stop_ids, records, tasks=tasks,
                             **options)
    return metrics, rows, args.compare_adapter or args.compare_model


def side_by_side(before: dict, after: dict) -> str:
    """A plain-text before/after/difference table for the terminal."""
    from llm_dojo.eval.report import metric_order

    lines = [f"{'metric':<34} {'before':>10} {'after':>10} {'difference':>11}"]
    for key in metric_order(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, (int, float)) and isinstance(new, (int, float)):
            lines.append(f"{key:<34} {old:>10.4f} {new:>10.4f} {new - old:>+11.4f}")
        else:
            lines.append(f"{key:<34} {old if old is not None else '–':>10} {new if new is not None else '–':>10}")
    return "\n".join(lines)
