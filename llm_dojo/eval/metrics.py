"""Answer metrics, written from scratch: exact match, contains, ROUGE-L and chrF, for English and Chinese alike.

Every metric compares one generated answer with one reference and returns a number in [0, 1]; a run reports the
mean over its answers.

- Tokens (`tokenize`): lowercased; every CJK character (Chinese, Japanese kana, Korean) is one token, because
  those scripts put no spaces between words; a run of other letters and digits is one token; punctuation and
  spaces separate tokens and are dropped. "I'm Dojo，由LLM-Dojo项目" → i, m, dojo, 由, llm, dojo, 项, 目.
- exact match: the normalised token sequences are equal (English articles a/an/the are dropped too, as SQuAD's
  normalisation does), so "Paris." matches "paris" and "The capital" matches "capital".
- contains: the reference (or any of a record's `keywords`) appears in the answer as a whole run of tokens, so
  "Paris" is found in "It is Paris." but not in "Parisian".
- ROUGE-L: the F-measure of the longest common subsequence of the two token lists (Lin 2004; what rouge_score's
  `rougeL` computes, sentence level): P = LCS/len(answer), R = LCS/len(reference), F = 2PR/(P+R).
- chrF: the character n-gram F-score (Popović 2015) with n = 1..6 and β = 2 (recall weighs twice as much),
  exactly sacrebleu's sentence-level chrF (its default settings: whitespace removed, case kept, precision and
  recall averaged over the orders that exist before F is taken) divided by 100.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Optional, Sequence

# Scripts written without spaces between words: each character is a token of its own.
CJK = ("\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
       "\U00020000-\U0002fa1f")
TOKEN = re.compile(rf"[{CJK}]|(?:(?![{CJK}])[^\W_])+")
ARTICLES = frozenset({"a", "an", "the"})

CHRF_ORDER = 6
CHRF_BETA = 2.0

METRICS = ("exact_match", "contains", "rouge_l", "chrf")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens: each CJK character alone, runs of other letters/digits together, no punctuation."""
    return TOKEN.findall(text.lower())


def normalize(text: str) -> list[str]:
    """The tokens exact match compares: `tokenize` without the English articles a, an, the."""
    return [token for token in tokenize(text) if token not in ARTICLES]


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference, else 0.0."""
    return float(normalize(answer) == normalize(reference))


def _contains_run(tokens: Sequence[str], run: Sequence[str]) -> bool:
    if not run:
        return False
    width = len(run)
    return any(list(tokens[i:i + width]) == list(run) for i in range(len(tokens) - width + 1))


def contains(answer: str, reference: str, keywords: Optional[Iterable[str]] = None) -> float:
    """1.0 when the answer holds the reference — or, given keywords, any one of them — as a whole run of tokens."""
    tokens = tokenize(answer)
    targets = list(keywords) if keywords else [reference]
    return float(any(_contains_run(tokens, tokenize(target)) for target in targets))


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(second) > len(first):
        first, second = second, first
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for j, other in enumerate(second, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure over `tokenize` tokens: 2PR/(P+R) with P = LCS/len(answer), R = LCS/len(reference)."""
    answer_tokens, reference_tokens = tokenize(answer), tokenize(reference)
    if not answer_tokens or not reference_tokens:
        return 0.0
    common = lcs_length(answer_tokens, reference_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(answer_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def char_ngrams(text: str, n: int) -> Counter:
    """Counts of the character n-grams of `text` with its whitespace removed."""
    text = "".join(text.split())
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(answer: str, reference: str, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """Sentence-level chrF in [0, 1] (sacrebleu's `sentence_chrf(answer, [reference]).score / 100`)."""
    precisions, recalls = [], []
    for n in range(1, order + 1):
        answer_grams, reference_grams = char_ngrams(answer, n), char_ngrams(reference, n)
        answer_count, reference_count = sum(answer_grams.values()), sum(reference_grams.values())
        if answer_count == 0 or reference_count == 0:
            continue  # an order neither side is long enough for does not count (sacrebleu's effective order)
        matches = sum(min(count, reference_grams[gram]) for gram, count in answer_grams.items())
        precisions.append(matches / answer_count)
        recalls.append(matches / reference_count)
    if not precisions:
        return 0.0
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    factor = beta ** 2
    return (1 + factor) * precision * recall / (factor * precision + recall)


def answer_scores(answer: str, reference: str, keywords: Optional[Iterable[str]] = None,
                  names: Sequence[str] = METRICS) -> dict[str, float]:
    """The chosen metrics of one answer against its reference (keywords only change `contains`)."""
    functions = {"exact_match": lambda: exact_match(answer, reference),
                 "contains": lambda: contains(answer, reference, keywords),
                 "rouge_l": lambda: rouge_l(answer, reference),
                 "chrf": lambda: chrf(answer, reference)}
    return {name: functions[name]() for name in names}
