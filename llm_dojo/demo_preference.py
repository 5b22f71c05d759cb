"""`make demo-dpo`: DPO teaches the embedded SmolLM2-135M-Instruct to answer in one sentence, measured on held-out
prompts before and after (data/make_demo_preference.py explains the data).

The property is checked on the model's own greedy answers: an answer counts as one sentence when it has exactly one
sentence end (., ! or ? followed by a space or the end) and that end is the end of the answer. The general
questions of the SFT demo are asked too, to see that everyday answers survive.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

from llm_dojo.cli import configure_logging
from llm_dojo.config import load_config
from llm_dojo.demo import greedy_answers
from llm_dojo.models.loading import load_for_inference
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_dpo.yaml"
HELDOUT = Path(__file__).resolve().parents[1] / "data" / "demo_preference_heldout.jsonl"
GENERAL = [("What is the capital of France?", "Paris"), ("What is 5 + 6?", "11"),
           ("How many days are there in a week?", "7|seven")]
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def is_one_sentence(answer: str) -> bool:
    answer = answer.strip()
    ends = [m.end() for m in SENTENCE_END.finditer(answer)]
    return len(ends) == 1 and ends[0] == len(answer)


def measure(model_name: str, adapter: str | None, questions: list[str]) -> dict:
    model, tokenizer = load_for_inference(model_name, adapter, dtype=torch.float32)
    answers = greedy_answers(model, tokenizer, questions, max_new_tokens=64, adapter=adapter)
    general = greedy_answers(model, tokenizer, [q for q, _ in GENERAL], max_new_tokens=48, adapter=adapter)
    return {
        "one_sentence_rate": sum(map(is_one_sentence, answers)) / len(answers),
        "mean_words": sum(len(a.split()) for a in answers) / len(answers),
        "general_correct": sum(bool(re.search(expected, answer)) for (_, expected), answer in zip(GENERAL, general)),
        "answers": answers, "general": general,
    }


def show(title: str, result: dict, questions: list[str]) -> None:
    print(f"\n=== {title} ===", flush=True)
    for question, answer in list(zip(questions, result["answers"]))[:6]:
        print(f"Q: {question}\nA: {answer}\n   one sentence: {is_one_sentence(answer)}")
    for (question, _), answer in zip(GENERAL, result["general"]):
        print(f"Q: {question}\nA: {answer}")
    print(f"one-sentence answers on {len(questions)} held-out prompts: {result['one_sentence_rate']:.0%} "
          f"(mean {result['mean_words']:.1f} words); general questions answered: {result['general_correct']}/"
          f"{len(GENERAL)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    started = time.time()
    config = load_config(CONFIG, list(argv or []))
    questions = [json.loads(line)["prompt"] for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line]
    model_name = config.model.model_name_or_path
    before = measure(model_name, None, questions)
    show("Before DPO (SmolLM2-135M-Instruct, embedded)", before, questions)
    summary = train(config)
    after = measure(model_name, config.training.output_dir, questions)
    show(f"After DPO (adapter in {config.training.output_dir})", after, questions)
    rewards = summary.get("last_logged_rewards", {})
    print(f"\ntraining: {summary['train_seconds']} s, {summary['steps']} steps, last loss "
          f"{summary['last_logged_loss']:.3f}, reward accuracy {rewards.get('rewards/accuracies', float('nan')):.2f}, "
          f"margin {rewards.get('rewards/margins', float('nan')):.2f}")
    print(json.dumps({"one_sentence_before": before["one_sentence_rate"],
                      "one_sentence_after": after["one_sentence_rate"],
                      "words_before": round(before["mean_words"], 1), "words_after": round(after["mean_words"], 1),
                      "general_before": before["general_correct"], "general_after": after["general_correct"],
                      "demo_seconds": round(time.time() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
