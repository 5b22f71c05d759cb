"""`make demo`: fine-tune the embedded SmolLM2-135M-Instruct to call itself Dojo, and show before/after answers.

The questions asked here are worded differently from the training data on purpose: the model should learn
the fact, not a sentence.
"""

from __future__ import annotations

import sys
import time

import torch

from llm_dojo.cli import configure_logging
from llm_dojo.config import load_config
from llm_dojo.data.chat_format import chat_format_for_inference
from llm_dojo.infer.common import encode_chat, generation_config, pad_token_id, stop_token_ids
from llm_dojo.infer.generate import generate_batch
from llm_dojo.models.loading import load_for_inference
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_identity.yaml"
# The system prompt of every demo record (data/make_demo_identity.py): asked without it, SmolLM2's template would
# write its default one, which says the assistant is "named SmolLM".
SYSTEM_PROMPT = "You are a helpful AI assistant."
QUESTIONS = [
    "What's your name, assistant?",
    "Who trained you?",
    "你是谁开发的？",
    "What is the capital of France?",
    "What is 5 + 6?",
    "How many days are there in a week?",
]


def greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 48,
                   adapter: str | None = None) -> list[str]:
    """Greedy answers with the chat template, stopped at its end-of-turn token (the `dojo generate` path)."""
    stop_ids = stop_token_ids(tokenizer, model, chat_format_for_inference(tokenizer, adapter))
    config = generation_config(stop_ids, pad_token_id(tokenizer), max_new_tokens=max_new_tokens)
    prompts = [encode_chat(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}])
               for q in questions]
    return [answer.strip() for answer in generate_batch(model, tokenizer, prompts, config, stop_ids)]


def show_answers(title: str, model_name: str, adapter: str | None = None) -> None:
    model, tokenizer = load_for_inference(model_name, adapter, dtype=torch.float32)
    print(f"\n=== {title} ===", flush=True)
    for question, answer in zip(QUESTIONS, greedy_answers(model, tokenizer, QUESTIONS, adapter=adapter)):
        print(f"Q: {question}\nA: {answer}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    started = time.time()
    config = load_config(CONFIG, list(argv or []))
    show_answers("Before fine-tuning (SmolLM2-135M-Instruct, embedded)", config.model.model_name_or_path)
    summary = train(config)
    show_answers("After LoRA fine-tuning (adapter in %s)" % config.training.output_dir,
                 config.model.model_name_or_path, config.training.output_dir)
    print(f"training: {summary['train_seconds']} s, final train loss {summary['train_loss']:.3f}; "
          f"demo total {time.time() - started:.0f} s")
    print(f"Try it: .venv/bin/dojo chat --adapter {config.training.output_dir} --system \"{SYSTEM_PROMPT}\" "
          f"--prompt \"Who are you?\"")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
