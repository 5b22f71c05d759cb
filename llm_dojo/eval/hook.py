"""`eval_after_training: FILE` in a training config: once `dojo train` has saved the output, the trained model (still
in memory, nothing reloaded) is evaluated on FILE — held-out loss with the training masks and the answer metrics —
into `output_dir/eval/` (report.md, metrics.json, answers.jsonl, metrics.png), and the metrics are added to
training_summary.json under "eval_after_training".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def eval_after_training(config, model, tokenizer, chat_format, summary: dict) -> None:
    """Evaluate the just-trained model on config.data.eval_after_training (first process only; skipped if unset)."""
    path = getattr(config.data, "eval_after_training", None)
    if not path or summary.get("interrupted") or int(os.environ.get("RANK", "0")) != 0:
        return
    from llm_dojo.eval.cli import evaluate
    from llm_dojo.eval.records import read_eval_records
    from llm_dojo.eval.report import write_json, write_report
    from llm_dojo.infer.common import stop_token_ids

    records = read_eval_records(path, config.data.dataset_format)
    saved_attention = getattr(model, "dojo_saved_attention", None)
    if getattr(model.config, "_attn_implementation", None) not in (None, "sdpa", "eager", saved_attention):
        model.set_attn_implementation(saved_attention or "sdpa")  # per-sample packed attention cannot left-pad
    metrics, rows = evaluate(model, tokenizer, chat_format, stop_token_ids(tokenizer, model, chat_format), records,
                             max_len=config.data.max_len, mask_history=config.data.mask_history)
    output = Path(config.training.output_dir)
    write_report(output / "eval", metrics, rows, {"model": config.model.model_name_or_path,
                                                  "adapter": str(output), "data": path})
    summary["eval_after_training"] = metrics
    summary_file = output / "training_summary.json"
    if summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        saved["eval_after_training"] = metrics
        write_json(summary_file, saved)
    logger.info("evaluated after training on %s: %s (report: %s)", path,
                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)), output / "eval")
