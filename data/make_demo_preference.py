"""Writes data/demo_preference.jsonl (training pairs) and data/demo_preference_heldout.jsonl (prompts only): the
preference demo's data (`make demo-dpo`, docs/preference.md).

The checkable property: the preferred answer is ONE sentence; the rejected answer starts with the same correct
sentence and then keeps talking. So the pairs teach when to stop, not a fact (both answers are right). The extra
sentences come from a pool per kind of question, so the model cannot learn one filler sentence to avoid.
Held-out prompts use items (countries, numbers, animals, words) that no training pair uses, plus one kind of
question the training set does not have at all.

Run `python data/make_demo_preference.py` after editing the lists; the files are committed.
"""

import json
import random
from pathlib import Path

SYSTEM_PROMPT = "You are a helpful AI assistant."

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Thailand", "Bangkok"),
            ("Russia", "Moscow"), ("Argentina", "Buenos Aires"), ("Cuba", "Havana"), ("Finland", "Helsinki"),
            ("Hungary", "Budapest"), ("Denmark", "Copenhagen")]
CAPITAL_MORE = ["It is the largest and best-known city in the country.",
                "Many tourists visit it every year to see its museums and old buildings.",
                "The national government and parliament meet there.",
                "It has a long history that goes back hundreds of years.",
                "The city is famous for its food, its parks and its busy streets.",
                "It is also an important centre for business and culture."]
ANIMALS = [("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"), ("lion", "roars"),
           ("sheep", "bleats"), ("horse", "neighs"), ("pig", "oinks"), ("owl", "hoots"), ("frog", "croaks"),
           ("snake", "hisses"), ("bee", "buzzes"), ("wolf", "howls"), ("mouse", "squeaks")]
ANIMAL_MORE = ["Animals make sounds like this to talk to each other.",
               "You can often hear it on farms or in the countryside.",
               "The sound can mean the animal is hungry, scared or excited.",
               "Young children often learn this sound from picture books.",
               "Different languages write the sound in different ways."]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"),
             ("light", "dark"), ("early", "late"), ("full", "empty"), ("open", "closed"), ("strong", "weak"),
             ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"), ("hard", "soft")]
OPPOSITE_MORE = ["Words with opposite meanings are called antonyms.",
                 "Knowing opposites helps you describe things more clearly.",
                 "Many English words have more than one opposite, depending on the sentence.",
                 "Teachers often use pairs like this to help children learn new words."]
ADDITION_MORE = ["To check it, you can count up from the first number.",
                 "Addition is one of the first things people learn in mathematics.",
                 "You can also write this as a short equation with a plus sign.",
                 "The order of the numbers does not change the result of an addition."]


def answer_pair(rng: random.Random, sentence: str, more: list[str]) -> tuple[str, str]:
    extra = rng.sample(more, 2)
    return sentence, " ".join([sentence] + extra)


def pairs(rng: random.Random) -> list[dict]:
    records = []
    for country, capital in CAPITALS[:18]:
        records.append((f"What is the capital of {country}?", *answer_pair(
            rng, f"The capital of {country} is {capital}.", CAPITAL_MORE)))
    for animal, sound in ANIMALS[:10]:
        records.append((f"What sound does a {animal} make?", *answer_pair(rng, f"A {animal} {sound}.", ANIMAL_MORE)))
    for word, opposite in OPPOSITES[:10]:
        records.append((f"What is the opposite of {word}?", *answer_pair(
            rng, f"The opposite of {word} is {opposite}.", OPPOSITE_MORE)))
    for a, b in [(2, 3), (4, 5), (7, 8), (10, 6), (12, 9), (15, 4), (20, 13), (3, 9), (6, 6), (11, 7), (14, 2),
                 (9, 9)]:
        records.append((f"What is {a} plus {b}?", *answer_pair(rng, f"{a} plus {b} is {a + b}.", ADDITION_MORE)))
    return [{"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
             "chosen": chosen, "rejected": rejected} for question, chosen, rejected in records]


def heldout() -> list[dict]:
    questions = [f"What is the capital of {country}?" for country, _ in CAPITALS[18:]]
    questions += [f"What sound does a {animal} make?" for animal, _ in ANIMALS[10:]]
    questions += [f"What is the opposite of {word}?" for word, _ in OPPOSITES[10:]]
    questions += [f"What is {a} plus {b}?" for a, b in [(5, 8), (13, 17), (21, 4), (8, 16)]]
    # A kind of question no training pair asks.
    questions += ["How many legs does a spider have?", "What colour is the sky on a clear day?",
                  "What do bees make?", "Which planet do we live on?"]
    return [{"prompt": question} for question in questions]


def main() -> None:
    folder = Path(__file__).resolve().parent
    records = pairs(random.Random(0))
    random.Random(1).shuffle(records)
    with open(folder / "demo_preference.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(folder / "demo_preference_heldout.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in heldout())
    print(f"{len(records)} pairs, {len(heldout())} held-out prompts")


if __name__ == "__main__":
    main()
