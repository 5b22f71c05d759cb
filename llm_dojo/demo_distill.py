"""`make demo-distill`: distil what a teacher knows into the embedded SmolLM2-135M-Instruct through its
distributions alone (stage: distill, GKD).

The teacher is the embedded model with the identity adapter of `make demo` (it answers that its name is Dojo); it is
trained first if outputs/demo-identity holds none. The student starts from the embedded model and is trained on the
identity demo's conversations toward the teacher's next-token distributions (forward KL, β 0; a quarter of the
batches on the student's own answers, `lmbda: 0.25`). Before and after, the student answers data/demo_identity_eval.jsonl: the identity score (answers that
contain "Dojo") should move toward the teacher's, and the general score should hold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from llm_dojo.cli import configure_logging
from llm_dojo.config import load_config
from llm_dojo.demo import CONFIG as TEACHER_CONFIG
from llm_dojo.demo import EVAL_DATA, scores_line
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_distill.yaml"


def scores(model_name: str, adapter: str | None, records, max_len: int) -> dict:
    """Identity and general scores of the model (with the adapter, if any), from its greedy answers."""
    from llm_dojo.data.chat_format import chat_format_for_inference
    from llm_dojo.eval.cli import evaluate
    from llm_dojo.infer.common import stop_token_ids
    from llm_dojo.models.loading import load_for_inference

    model, tokenizer = load_for_inference(model_name, adapter, dtype=torch.float32)
    chat_format = chat_format_for_inference(tokenizer, adapter)
    metrics, _ = evaluate(model, tokenizer, chat_format, stop_token_ids(tokenizer, model, chat_format), records,
                          max_len=max_len)
    return metrics


def main(argv: list[str] | None = None) -> int:
    from llm_dojo.eval.records import read_eval_records

    configure_logging()
    started = time.time()
    config = load_config(CONFIG, list(argv or []) + [f"eval_after_training={EVAL_DATA}"])
    teacher = config.rl.teacher_adapter
    if not (Path(teacher) / "adapter_config.json").is_file():
        print(f"training the teacher first (the `make demo` adapter, into {teacher})", flush=True)
        train(load_config(TEACHER_CONFIG, [f"output_dir={teacher}"]))
    records = read_eval_records(EVAL_DATA)
    model_name, max_len = config.model.model_name_or_path, config.data.max_len
    teacher_scores = scores(model_name, teacher, records, max_len)
    before = scores(model_name, None, records, max_len)
    summary = train(config)
    after = summary["eval_after_training"]
    print(f"\nteacher (embedded + {teacher}): {scores_line(teacher_scores)}")
    print(f"student before:                  {scores_line(before)}")
    print(f"student after distillation:      {scores_line(after)}")
    print(f"training: {summary['train_seconds']} s, {summary['steps']} steps, {summary['on_policy_batches']} "
          f"on-policy batches; demo total {time.time() - started:.0f} s (report: {config.training.output_dir}/eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
