"""The benchmark's chat data: a deterministic, length-skewed set of English conversations made from a seed.

Real chat sets are skewed: most answers are short, a few are very long. Padding a batch to its longest
sample then wastes most of the compute, which is what the benchmark measures. Each record's length (in
SmolLM2 tokens, chat template included) is drawn from a fixed quantile curve,

    p0 ≈ 40, p10 ≈ 67, p50 ≈ 111, p90 ≈ 492, p100 ≈ 1014,

interpolated log-linearly (targets capped at 1,000 so no sample outgrows a 1,024-token row), and the text is
written to that length from small topic word banks. About a quarter of the records are multi-turn
(2–3 exchanges), some carry their own system prompt. Nothing is downloaded and
nothing is committed: `make_records(n, seed)` returns the same records on every machine.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

# (cumulative probability, tokens) points of the length distribution; log-linear in between.
LENGTH_QUANTILES = ((0.0, 40), (0.1, 67), (0.5, 111), (0.9, 492), (1.0, 1014))
MAX_TARGET_TOKENS = 1000  # the text lands within about ±20 tokens of its target: stay under max_len 1024
TOKENS_PER_WORD = 1.2  # SmolLM2's tokenizer on this generated English (measured)
DEFAULT_SYSTEM_TOKENS = 20  # the SmolLM2 template's default system turn
TURN_OVERHEAD_TOKENS = 5  # "<|im_start|>role\n" … "<|im_end|>\n"

TOPICS = {
    "cooking": {
        "things": ["the sauce", "a sourdough loaf", "the onions", "fresh pasta", "the stock", "a pie crust",
                   "the rice", "roasted vegetables", "the dough", "a tomato soup"],
        "actions": ["simmer", "season", "knead", "rest", "stir", "taste", "chill", "bake", "reduce", "fold"],
        "qualities": ["richer", "crispier", "more even", "less bitter", "softer", "more fragrant"],
        "reasons": ["the starch needs time to swell", "heat spreads slowly through a thick pan",
                    "salt draws water out of the vegetables", "gluten relaxes while the dough rests",
                    "sugar browns quickly above a certain temperature"],
    },
    "travel": {
        "things": ["the night train", "a city pass", "the old harbour", "a mountain hut", "the museum ticket",
                   "a rental bike", "the ferry", "a walking tour", "the coastal path", "the airport bus"],
        "actions": ["book", "visit", "compare", "reserve", "check", "plan", "pack for", "avoid", "try", "join"],
        "qualities": ["cheaper", "quieter", "faster", "more scenic", "less crowded", "more flexible"],
        "reasons": ["prices rise sharply in the summer months", "the last connection leaves early",
                    "local holidays close many shops", "weather in the hills changes within an hour",
                    "the early slots sell out first"],
    },
    "science": {
        "things": ["the experiment", "a control group", "the sample", "the measurement", "a hypothesis",
                   "the error bars", "the reaction", "a thermometer", "the data set", "the model"],
        "actions": ["repeat", "calibrate", "measure", "record", "test", "compare", "plot", "average", "check",
                    "isolate"],
        "qualities": ["more precise", "more reliable", "easier to reproduce", "less noisy", "clearer",
                      "more convincing"],
        "reasons": ["a single reading can be an outlier", "instruments drift as they warm up",
                    "small samples exaggerate random effects", "a hidden variable can explain the pattern",
                    "rounding errors add up over many steps"],
    },
    "programming": {
        "things": ["the function", "a unit test", "the cache", "the database query", "a config file",
                   "the error message", "the loop", "a log line", "the API call", "the build script"],
        "actions": ["refactor", "profile", "document", "rename", "split", "retry", "validate", "measure",
                    "simplify", "review"],
        "qualities": ["faster", "easier to read", "safer", "more predictable", "smaller", "easier to test"],
        "reasons": ["most time is spent in a few hot paths", "a clear name saves a comment",
                    "the network can fail at any moment", "silent defaults hide mistakes",
                    "small functions are easier to reason about"],
    },
    "history": {
        "things": ["the old trade route", "a medieval charter", "the city walls", "the printing press",
                   "a harbour town", "the first railway", "the guild records", "a royal decree", "the census",
                   "the canal"],
        "actions": ["study", "read", "trace", "date", "map", "question", "compare", "translate", "catalogue",
                    "revisit"],
        "qualities": ["older", "more influential", "better documented", "more disputed", "wider",
                      "more surprising"],
        "reasons": ["merchants kept careful accounts", "few copies of the text survived",
                    "the river changed its course", "rulers rewrote earlier records",
                    "the town grew around its market"],
    },
}
OPENERS = ["Sure.", "Good question.", "Here is how I would think about it.", "In short:", "It depends a little."]
QUESTION_FORMS = [
    "How should I {action} {thing}?",
    "Why does {thing} turn out {quality} when I {action} it first?",
    "Can you explain how to {action} {thing} step by step?",
    "What is the best way to {action} {thing} if I want it {quality}?",
    "Is it worth it to {action} {thing}?",
]
SENTENCE_FORMS = [
    "If you {action} {thing} first, it usually ends up {quality}.",
    "The main reason is that {reason}.",
    "Try to {action} {thing} a little earlier than you think.",
    "Many people skip this, but {thing} gets {quality} when you {action} it carefully.",
    "Keep in mind that {reason}, so plan for it.",
    "A simple check is to {action} {thing} twice and compare the results.",
    "Start small: {action} {thing} once, note what happened, then adjust.",
]
SYSTEM_PROMPTS = ["You are a patient teacher who explains things clearly.", "Answer as a practical expert.",
                  "You are a friendly assistant. Keep answers concrete."]


def length_quantile(u: float) -> int:
    """Token length at cumulative probability u of the benchmark's length curve."""
    for (p0, t0), (p1, t1) in zip(LENGTH_QUANTILES, LENGTH_QUANTILES[1:]):
        if u <= p1:
            share = (u - p0) / (p1 - p0)
            return round(math.exp(math.log(t0) + share * (math.log(t1) - math.log(t0))))
    return LENGTH_QUANTILES[-1][1]


def _fill(form: str, bank: dict, rng: random.Random) -> str:
    return form.format(action=rng.choice(bank["actions"]), thing=rng.choice(bank["things"]),
                       quality=rng.choice(bank["qualities"]), reason=rng.choice(bank["reasons"]))


def _answer(words: int, bank: dict, rng: random.Random) -> str:
    """Sentences from the topic's bank until about `words` words; paragraphs every few sentences."""
    sentences = [rng.choice(OPENERS)]
    count = len(sentences[0].split())
    while True:
        sentence = _fill(rng.choice(SENTENCE_FORMS), bank, rng)
        if count + len(sentence.split()) / 2 > words:  # stop at the sentence that lands closest to the target
            break
        sentences.append(sentence)
        count += len(sentence.split())
    paragraphs, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if len(current) >= rng.randint(3, 6):
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def make_record(target_tokens: int, rng: random.Random) -> dict:
    """One conversation of about `target_tokens` tokens once rendered with the SmolLM2 chat template."""
    topic = rng.choice(sorted(TOPICS))
    bank = TOPICS[topic]
    messages = []
    budget = target_tokens - DEFAULT_SYSTEM_TOKENS
    if rng.random() < 0.15:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        budget -= 12 - DEFAULT_SYSTEM_TOKENS + TURN_OVERHEAD_TOKENS  # replaces the default system turn
    exchanges = 1 if budget < 90 or rng.random() < 0.6 else rng.choice((2, 2, 3))
    share = budget / exchanges
    for _ in range(exchanges):
        question = _fill(rng.choice(QUESTION_FORMS), bank, rng)
        messages.append({"role": "user", "content": question})
        answer_tokens = share - 2 * TURN_OVERHEAD_TOKENS - len(question.split()) * TOKENS_PER_WORD
        messages.append({"role": "assistant", "content": _answer(max(3, round(answer_tokens / TOKENS_PER_WORD)),
                                                                  bank, rng)})
    return {"messages": messages, "topic": topic}


def make_records(n: int, seed: int = 0) -> list[dict]:
    """`n` conversations whose lengths follow LENGTH_QUANTILES (stratified, so even small n keep the spread)."""
    rng = random.Random(seed)
    # Stratified draws: one length from each of n equal-probability slices, shuffled; the last slice is the max.
    targets = [min(MAX_TARGET_TOKENS, length_quantile((i + rng.random()) / n)) for i in range(n)]
    targets[-1] = MAX_TARGET_TOKENS
    rng.shuffle(targets)
    return [make_record(t, rng) for t in targets]


def write_jsonl(records: list[dict], path: Path) -> Path:
    """Write records as jsonl (one {"messages": [...]} per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path
