"""Generated answers and their metrics: batched greedy generation (the `dojo generate` path), then metrics.py."""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from llm_dojo.eval.metrics import METRICS, answer_scores
from llm_dojo.eval.records import EvalRecord
from llm_dojo.infer.common import encode_chat, generation_config, pad_token_id, with_system
from llm_dojo.infer.generate import generate_batch

logger = logging.getLogger(__name__)


def generate_answers(model, tokenizer, records: Sequence[EvalRecord], stop_ids: list[int], *, batch_size: int = 8,
                     max_new_tokens: int = 128, system: Optional[str] = None) -> list[str]:
    """Greedy answers to every record's prompt, in record order; prompts of similar length share a batch."""
    prompts = [encode_chat(tokenizer, with_system(record.prompt, system)) for record in records]
    config = generation_config(stop_ids, pad_token_id(tokenizer), max_new_tokens=max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less left padding per batch
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    with tqdm(total=len(prompts), desc="answers", unit="prompt", file=sys.stderr, disable=len(prompts) < 16) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for index, answer in zip(chunk, generate_batch(model, tokenizer, [prompts[i] for i in chunk], config,
                                                           stop_ids)):
                answers[index] = answer.strip()
            bar.update(len(chunk))
    model.train(was_training)
    return answers


def score_answers(records: Sequence[EvalRecord], answers: Sequence[str],
                  names: Sequence[str] = METRICS) -> tuple[dict[str, float], list[dict]]:
    """Mean of each metric over all answers and per group (`group/metric`), and one row per record."""
    rows, totals, counts = [], {}, {}
    for record, answer in zip(records, answers):
        scores = answer_scores(answer, record.reference, record.keywords, names)
        rows.append({"source": record.source, "group": record.group, "prompt": record.prompt[-1]["content"],
                     "reference": record.reference, "keywords": record.keywords, "answer": answer, **scores})
        for prefix in ("",) + ((f"{record.group}/",) if record.group else ()):
            counts[prefix] = counts.get(prefix, 0) + 1
            for name, value in scores.items():
                totals[prefix + name] = totals.get(prefix + name, 0.0) + value
    means = {key: value / counts[key.rpartition("/")[0] + "/" if "/" in key else ""] for key, value in totals.items()}
    means["answers"] = len(rows)
    return means, rows
