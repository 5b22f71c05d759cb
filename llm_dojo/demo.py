"""`make demo`: fine-tune the embedded SmolLM2-135M-Instruct to call itself Dojo, and show before/after answers.

The questions asked here are worded differently from the training data on purpose: the model should learn
the fact, not a sentence.
"""

from __future__ import annotations

import logging
import sys
import time

import torch

from llm_dojo.config import load_config
from llm_dojo.models.loading import load_for_inference
from llm_dojo.recipes.sft import train

CONFIG = "train_args/demo_identity.yaml"
QUESTIONS = [
    "What's your name, assistant?",
    "Who trained you?",
    "你是谁开发的？",
    "What is the capital of France?",
    "What is 5 + 6?",
    "How many days are there in a week?",
]


@torch.no_grad()
def greedy_answer(model, tokenizer, question: str, max_new_tokens: int = 48) -> str:
    """One greedy answer with the model's chat template, stopped at its end-of-turn token."""
    input_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                            max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def show_answers(title: str, model_name: str, adapter: str | None = None) -> None:
    model, tokenizer = load_for_inference(model_name, adapter, dtype=torch.float32)
    print(f"\n=== {title} ===", flush=True)
    for question in QUESTIONS:
        print(f"Q: {question}\nA: {greedy_answer(model, tokenizer, question)}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    config = load_config(CONFIG, list(argv or []))
    show_answers("Before fine-tuning (SmolLM2-135M-Instruct, embedded)", config.model.model_name_or_path)
    summary = train(config)
    show_answers("After LoRA fine-tuning (adapter in %s)" % config.training.output_dir,
                 config.model.model_name_or_path, config.training.output_dir)
    print(f"training: {summary['train_seconds']} s, final train loss {summary['train_loss']:.3f}; "
          f"demo total {time.time() - started:.0f} s")
    print(f"Try it: .venv/bin/dojo chat --model smollm2-135m-instruct --adapter {config.training.output_dir} "
          f"--prompt \"Who are you?\"")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
