"""`make demo-rl`: GRPO teaches the embedded SmolLM2-135M-Instruct to put its whole answer inside <answer></answer>
tags, a format checked by a regular expression (data/make_demo_rl.py explains the prompts).

Measured on 22 held-out prompts before and after training, from the model's own completions: `reward` is the mean
over 8 sampled completions per prompt at the training temperature (the policy's expected reward, what RL raises),
`reward_greedy` one greedy answer per prompt. The SFT demo's general questions are asked too (without the format
instruction), to see that everyday answers survive.
"""

from __future__ import annotations

import json
import re
import sys
import time

import torch

from llm_dojo.cli import configure_logging
from llm_dojo.config import load_config
from llm_dojo.demo import greedy_answers
from llm_dojo.models.loading import load_for_inference
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_grpo.yaml"
GENERAL = [("What is the capital of France?", "Paris"), ("What is 5 + 6?", "11"),
           ("How many days are there in a week?", "7|seven")]


def general_answers(model_name: str, adapter: str | None) -> list[str]:
    model, tokenizer = load_for_inference(model_name, adapter, dtype=torch.float32)
    return greedy_answers(model, tokenizer, [q for q, _ in GENERAL], max_new_tokens=48, adapter=adapter)


def general_score(answers: list[str]) -> int:
    return sum(bool(re.search(expected, answer)) for (_, expected), answer in zip(GENERAL, answers))


def show(title: str, metrics: dict, answers: list[str], general: list[str]) -> None:
    print(f"\n=== {title} ===", flush=True)
    for answer in answers[:6]:
        print(f"A: {answer!r}")
    for (question, _), answer in zip(GENERAL, general):
        print(f"Q: {question}\nA: {answer}")
    print(f"held-out reward: sampled {metrics['reward']:.2f}, greedy {metrics['reward_greedy']:.2f}; general "
          f"questions answered: {general_score(general)}/{len(GENERAL)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    started = time.time()
    config = load_config(CONFIG, list(argv or []))
    model_name = config.model.model_name_or_path
    general_before = general_answers(model_name, None)
    summary = train(config)  # measures the held-out reward before and after (recipes/rl.py)
    before, after = summary["heldout_reward_before"], summary["heldout_reward_after"]
    general_after = general_answers(model_name, config.training.output_dir)
    show("Before GRPO (SmolLM2-135M-Instruct, embedded)", before, summary.get("heldout_answers_before", []),
         general_before)
    show(f"After GRPO (adapter in {config.training.output_dir})", after, summary["heldout_answers_after"],
         general_after)
    print(f"\ntraining: {summary['train_seconds']} s, {summary['steps']} steps, last logged reward "
          f"{summary.get('last_logged_reward', float('nan')):.2f}")
    print(json.dumps({"reward_before": round(before["reward"], 3), "reward_after": round(after["reward"], 3),
                      "reward_greedy_before": round(before["reward_greedy"], 3),
                      "reward_greedy_after": round(after["reward_greedy"], 3),
                      "general_before": general_score(general_before), "general_after": general_score(general_after),
                      "train_seconds": summary["train_seconds"], "demo_seconds": round(time.time() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
