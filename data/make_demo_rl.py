"""Writes data/demo_rl_prompts.jsonl (training prompts) and data/demo_rl_heldout.jsonl (held-out prompts): the RL
demo's data (`make demo-rl`, docs/rl.md).

The verifiable format: the whole answer is `<answer>…</answer>`. Every prompt carries the instruction in its system
message and one worked example (a user question and the assistant's tagged answer) before the real question, so
the base model earns the reward some of the time — a group whose rewards are all equal has no advantage and
teaches nothing. The questions reuse the preference demo's lists (capitals, animal sounds, opposites, additions);
held-out prompts use items no training prompt uses, plus kinds of question the training set does not ask.

Run `python data/make_demo_rl.py` after editing the lists; the files are committed.
"""

import json
import random
from pathlib import Path

from make_demo_preference import ANIMALS, CAPITALS, OPPOSITES

INSTRUCTION = "Put the final answer inside <answer></answer> tags."
EXAMPLE = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "<answer>4</answer>"}]


def prompt(question: str) -> dict:
    return {"messages": [{"role": "system", "content": INSTRUCTION}, *EXAMPLE,
                         {"role": "user", "content": question}]}


def training_questions() -> list[str]:
    questions = [f"What is the capital of {country}?" for country, _ in CAPITALS[:18]]
    questions += [f"What sound does a {animal} make?" for animal, _ in ANIMALS[:10]]
    questions += [f"What is the opposite of {word}?" for word, _ in OPPOSITES[:10]]
    questions += [f"What is {a} plus {b}?" for a, b in [(2, 3), (4, 5), (7, 8), (10, 6), (12, 9), (15, 4), (20, 13),
                                                        (3, 9), (6, 6), (11, 7)]]
    return questions


def heldout_questions() -> list[str]:
    questions = [f"What is the capital of {country}?" for country, _ in CAPITALS[18:]]
    questions += [f"What sound does a {animal} make?" for animal, _ in ANIMALS[10:]]
    questions += [f"What is the opposite of {word}?" for word, _ in OPPOSITES[10:]]
    questions += [f"What is {a} plus {b}?" for a, b in [(5, 8), (13, 17), (21, 4), (8, 16)]]
    questions += ["How many legs does a spider have?", "What colour is the sky on a clear day?",
                  "What do bees make?", "Which planet do we live on?"]
    return questions


def main() -> None:
    folder = Path(__file__).resolve().parent
    train = training_questions()
    random.Random(0).shuffle(train)
    for name, questions in (("demo_rl_prompts.jsonl", train), ("demo_rl_heldout.jsonl", heldout_questions())):
        with open(folder / name, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(prompt(q), ensure_ascii=False) + "\n" for q in questions)
    print(f"{len(train)} training prompts, {len(heldout_questions())} held-out prompts")


if __name__ == "__main__":
    main()
