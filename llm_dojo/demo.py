"""`make demo`: fine-tune the embedded SmolLM2-135M-Instruct to call itself Dojo, and measure before/after.

The questions asked here (data/demo_identity_eval.jsonl) are mostly worded differently from the training data on
purpose: the model should learn the fact, not a sentence. The identity score is the share of identity answers
that contain the name "Dojo"; the general score the share of general questions answered with the expected fact
(Paris, 11, 7, …) — both computed from the actual greedy answers, before and after training (`dojo eval`'s metrics;
the "after" run is `eval_after_training`, on the trained model still in memory). The side-by-side report is
written to OUTPUT_DIR/eval/report.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from llm_dojo.cli import configure_logging
from llm_dojo.config import load_config
from llm_dojo.data.chat_format import chat_format_for_inference
from llm_dojo.infer.common import encode_chat, generation_config, pad_token_id, stop_token_ids
from llm_dojo.infer.generate import generate_batch
from llm_dojo.models.loading import load_for_inference
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_identity.yaml"
EVAL_DATA = str(Path(__file__).resolve().parent.parent / "data" / "demo_identity_eval.jsonl")
SHOWN = 6  # answers printed per stage (the first three of each group); the scores cover all of them
# The system prompt of every demo record (data/make_demo_identity.py): asked without it, SmolLM2's template would
# write its default one, which says the assistant is "named SmolLM".
SYSTEM_PROMPT = "You are a helpful AI assistant."


def greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 48,
                   adapter: str | None = None) -> list[str]:
    """Greedy answers with the chat template, stopped at its end-of-turn token (the `dojo generate` path)."""
    stop_ids = stop_token_ids(tokenizer, model, chat_format_for_inference(tokenizer, adapter))
    config = generation_config(stop_ids, pad_token_id(tokenizer), max_new_tokens=max_new_tokens)
    prompts = [encode_chat(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}])
               for q in questions]
    return [answer.strip() for answer in generate_batch(model, tokenizer, prompts, config, stop_ids)]


def show_answers(title: str, rows: list[dict]) -> None:
    """A few of the answers, one line each (the report has all of them)."""
    print(f"\n=== {title} ===", flush=True)
    shown = [r for r in rows if r["group"] == "identity"][:SHOWN // 2] + [r for r in rows if r["group"] == "general"][
        :SHOWN // 2]
    for row in shown:
        answer = " ".join(row["answer"].split())
        print(f"Q: {row['prompt']}\nA: {answer[:110] + '…' if len(answer) > 110 else answer}", flush=True)


def evaluate_base(model_name: str, records, max_len: int) -> tuple[dict, list[dict]]:
    """The embedded model's scores before training (the same metrics eval_after_training computes afterwards)."""
    from llm_dojo.eval.cli import evaluate

    model, tokenizer = load_for_inference(model_name, dtype=torch.float32)
    chat_format = chat_format_for_inference(tokenizer)
    # The settings eval_after_training uses after training: its defaults, and the config's max_len.
    return evaluate(model, tokenizer, chat_format, stop_token_ids(tokenizer, model, chat_format), records,
                    max_len=max_len)


def scores_line(metrics: dict) -> str:
    return (f"identity {metrics['identity/contains']:.0%} (answers containing 'Dojo'), general "
            f"{metrics['general/contains']:.0%} (expected fact in the answer), held-out loss {metrics['loss']:.3f}")


def main(argv: list[str] | None = None) -> int:
    from llm_dojo.eval.records import read_eval_records
    from llm_dojo.eval.report import write_report

    configure_logging()
    started = time.time()
    overrides = list(argv or [])
    if not any(o.startswith("eval_after_training=") for o in overrides):
        overrides.append(f"eval_after_training={EVAL_DATA}")
    config = load_config(CONFIG, overrides)
    records = read_eval_records(config.data.eval_after_training)
    before, before_rows = evaluate_base(config.model.model_name_or_path, records, config.data.max_len)
    show_answers("Before fine-tuning (SmolLM2-135M-Instruct, embedded)", before_rows)
    print(f"scores: {scores_line(before)}", flush=True)
    summary = train(config)  # eval_after_training: the trained model answers the same questions
    output = Path(config.training.output_dir)
    after = summary["eval_after_training"]
    after_rows = [json.loads(line) for line in (output / "eval" / "answers.jsonl").read_text().splitlines()]
    show_answers(f"After LoRA fine-tuning (adapter in {output})", after_rows)
    print(f"scores: {scores_line(after)}")
    write_report(output / "eval", after, after_rows, {"model": config.model.model_name_or_path,
                                                      "adapter": str(output), "data": config.data.eval_after_training},
                 before, ("base model", "after LoRA"), before_rows=before_rows)
    print(f"\nidentity score {before['identity/contains']:.0%} -> {after['identity/contains']:.0%}; general score "
          f"{before['general/contains']:.0%} -> {after['general/contains']:.0%} (report: {output / 'eval' / 'report.md'})")
    print(f"training: {summary['train_seconds']} s, final train loss {summary['train_loss']:.3f}; "
          f"demo total {time.time() - started:.0f} s")
    print(f"Try it: .venv/bin/dojo chat --adapter {config.training.output_dir} --system \"{SYSTEM_PROMPT}\" "
          f"--prompt \"Who are you?\"")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
