"""Built-in reward functions for stage: grpo, as plain callables with TRL's reward-function signature.

Every reward function is called as `fn(completions, prompts=None, **kwargs) -> list[float | None]`:
- `completions`: one item per sampled completion, a string or TRL's conversational shape
  `[{"role": "assistant", "content": "..."}]` (`completion_text` reads either);
- `kwargs`: the prompt records' other columns ("answer", "solution", ...), each a list aligned with `completions`,
  and `completion_ids` (one list of token ids per completion);
- the result: one reward per completion, or None where the function does not apply (TRL skips it).

The built-ins, by the name `reward_funcs` uses:
    format        1.0 when the whole completion matches `reward_format_pattern`           format_reward(pattern)
    think_format  1.0 for "<think>reasoning</think>answer"                                think_format
    math_answer   1.0 when the final answer equals the gold one (math_verify), None        math_answer
                  when the gold answer cannot be read
    length        DAPO's soft over-long penalty, 0 down to -1 near max_completion_length   soft_overlong_penalty(...)

The configurable ones are small callable classes rather than closures so they can be pickled (a rollout worker in
another process can receive them), as TRL does for its own.
"""

from __future__ import annotations

import logging
import numbers
import re
import threading
from typing import Any, Optional

logger = logging.getLogger(__name__)


class RewardError(ValueError):
    """A reward function got inputs it cannot score, or returned something that is not one reward per completion."""


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, one message, or a list of messages (the last assistant message)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        raise RewardError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
    # Several messages happen with tool calls (assistant, tool, assistant): the last assistant message is the answer.
    answers = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    if not answers:
        roles = ", ".join(str(m.get("role")) if isinstance(m, dict) else type(m).__name__ for m in completion)
        raise RewardError(f"a conversational completion must hold an assistant message, got [{roles or 'nothing'}]")
    content = answers[-1].get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: [{"type": "text", "text": "..."}, ...]
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    raise RewardError(f"a message's 'content' must be a string or a list of text blocks, got {type(content).__name__}")


# --- format -------------------------------------------------------------------------------------------------------


class FormatReward:
    """1.0 when the whole completion (surrounding whitespace stripped) matches the pattern, else 0.0.

    Whole-completion matching (`re.fullmatch`, with `.` matching newlines) is deliberate: `re.search` would also
    reward a completion that holds the format somewhere inside other text, which the policy learns to exploit.
    Anchors (`^`, `$`) are therefore unnecessary but harmless; to accept text around the format, say so in the
    pattern: `.*<answer>.+</answer>.*`.
    """

    __name__ = "format"

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.regex = re.compile(pattern, re.DOTALL)

    def __call__(self, completions: list, prompts: Optional[list] = None, **kwargs) -> list[float]:
        return [1.0 if self.regex.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]


def format_reward(pattern: str) -> FormatReward:
    """A reward function giving 1.0 to completions that match `pattern` as a whole (`re.fullmatch`, DOTALL)."""
    return FormatReward(pattern)


# --- think_format -------------------------------------------------------------------------------------------------


def think_format(completions: list, prompts: Optional[list] = None, **kwargs) -> list[float]:
    """1.0 for "<think>reasoning</think>answer" (one tag pair, both parts non-empty), else 0.0.

    Stricter than TRL's `think_format_reward` on purpose: TRL also rewards an empty answer ("<think>…</think>" and
    nothing after: the policy learns to stop after thinking), an empty reasoning ("<think></think>42") and a second
    "</think>". Like `format`, surrounding whitespace is ignored (TRL needs "<think>" as the very first character).
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion).strip()
        if not text.startswith("<think>") or text.count("<think>") != 1 or text.count("</think>") != 1:
            rewards.append(0.0)
            continue
        reasoning, answer = text[len("<think>"):].split("</think>")
        rewards.append(1.0 if reasoning.strip() and answer.strip() else 0.0)
    return rewards


# --- math_answer --------------------------------------------------------------------------------------------------

# Where the gold answer is looked up, in order. `answer` comes first because where a data set has both (MATH-500,
# OpenR1-Math) it holds the short final answer while `solution` holds the worked derivation.
GOLD_COLUMNS = ("answer", "solution")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(\{[^{}]*\})?")
_TWO_WORDS = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")


def gold_text(gold: str) -> tuple[str, bool]:
    """The gold answer's text to parse, and whether to read it as LaTeX math (as if written between `$`).

    - GSM8K style "worked solution #### 72": the part after the last "####".
    - Text that already marks its math (`$…$` or `\\boxed{}`), or reads as prose (several lines, or two words in
      a row outside LaTeX commands): parsed as written; math_verify then takes the boxed or anchored answer.
    - Anything else is a bare final answer ("2x+3", "\\frac{14}{3}", "(1,2)") and is read as LaTeX math (as
      written, math_verify would take the number "2" out of "2x+3").
    """
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1]
    gold = gold.strip()
    marked = bool(_UNESCAPED_DOLLAR.search(gold)) or "\\boxed" in gold
    prose = "\n" in gold or bool(_TWO_WORDS.search(_LATEX_COMMAND.sub(" ", gold)))
    return gold, not (marked or prose)


def _math_verify_timeouts() -> Optional[int]:
    """math_verify's timeouts use signal.alarm, which works only in the main thread: elsewhere they are switched off."""
    if threading.current_thread() is threading.main_thread():
        return 5
    for name in ("math_verify.parser", "math_verify.grader"):  # they warn once that the timeout is off; we know
        logging.getLogger(name).setLevel(logging.ERROR)
    return None


def math_answer(completions: list, prompts: Optional[list] = None, **kwargs) -> list[Optional[float]]:
    """1.0 when the completion's final answer equals the gold answer (column `answer`, else `solution`), else 0.0;
    None (not applicable) where the gold answer cannot be parsed.

    The completion is read after its last "</think>" when it has one. Its answer must be marked: `\\boxed{…}`
    (tried first), or anchored ("the answer is 0.5", "Answer: $\\frac12$"). A bare number somewhere in the text
    does not count: rewarding the last number seen is easy to game. TRL's `accuracy_reward` accepts only LaTeX;
    here an anchored plain expression counts too, as small models on GSM8K-style data write "The answer is 72".
    """
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    golds = _gold_column(kwargs, len(completions))
    timeout = _math_verify_timeouts()
    answer_config = [
        LatexExtractionConfig(normalization_config=NormalizationConfig(units=True), boxed_match_priority=0,
                              try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    rewards: list[Optional[float]] = []
    for completion, gold in zip(completions, golds):
        gold_parsed = _parse_gold(gold, parse, timeout)
        if not gold_parsed:
            rewards.append(None)
            continue
        text = completion_text(completion).rsplit("</think>", 1)[-1]
        answer = parse(text, extraction_config=answer_config, extraction_mode="first_match", parsing_timeout=timeout)
        rewards.append(1.0 if answer and verify(gold_parsed, answer, timeout_seconds=timeout) else 0.0)
    return rewards


def _gold_column(columns: dict, count: int) -> list:
    for name in GOLD_COLUMNS:
        if columns.get(name) is not None:
            values = columns[name]
            if not isinstance(values, (list, tuple)) or len(values) != count:
                got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
                raise RewardError(f"math_answer: column '{name}' must hold one value per completion ({count}), "
                                  f"got {got}")
            return list(values)
    present = sorted(key for key in columns if key not in ("completion_ids", "trainer_state", "log_extra",
                                                           "log_metric"))
    raise RewardError(f"math_answer needs the gold answer in a field 'answer' or 'solution' of every prompt record "
                      f"(fields present: {present or 'none'})")


def _parse_gold(gold: Any, parse, timeout: Optional[int]) -> list:
    if gold is None or isinstance(gold, bool):
        return []
    if isinstance(gold, numbers.Real):
        gold = str(gold)
    if not isinstance(gold, str):
        raise RewardError(f"math_answer: a gold answer must be a string or a number, got {type(gold).__name__}: "
                          f"{gold!r:.80}")
    text, as_latex = gold_text(gold)
    return parse(f"${text}$" if as_latex else text, parsing_timeout=timeout) if text else []


# --- length -------------------------------------------------------------------------------------------------------


class SoftOverlongPenalty:
    """DAPO's soft over-long penalty (arXiv:2503.14476, Eq. 13) on the completion's length in tokens.

        0                                 if len <= L_max - L_cache
        (L_max - L_cache - len) / L_cache if L_max - L_cache < len <= L_max    (0 down to -1)
        -1                                if len > L_max
    """

    __name__ = "length"

    def __init__(self, max_completion_length: int, overlong_cache: int):
        if not (isinstance(max_completion_length, int) and max_completion_length >= 1):
            raise RewardError(f"the 'length' reward needs 'max_completion_length' of at least 1, got "
                              f"{max_completion_length!r}")
        if not (isinstance(overlong_cache, int) and 0 <= overlong_cache <= max_completion_length):
            raise RewardError(f"'overlong_cache' must be between 0 and max_completion_length "
                              f"({max_completion_length}), got {overlong_cache!r}")
        self.max_completion_length = max_completion_length
        self.overlong_cache = overlong_cache

    def __call__(self, completions: list, prompts: Optional[list] = None, completion_ids: Optional[list] = None,
                 **kwargs) -> list[float]:
        if completion_ids is None:
            raise RewardError("the 'length' reward counts tokens and needs completion_ids (one list of token ids per "
                              "completion); the trainer passes them, a direct call must too")
        if len(completion_ids) != len(completions):
            raise RewardError(f"the 'length' reward got {len(completion_ids)} completion_ids for "
                              f"{len(completions)} completions")
        free = self.max_completion_length - self.overlong_cache  # lengths up to here are not penalised
        rewards = []
        for ids in completion_ids:
            length = len(ids)
            if length <= free:
                rewards.append(0.0)
            elif length <= self.max_completion_length:
                rewards.append((free - length) / self.overlong_cache)
            else:
                rewards.append(-1.0)
        return rewards


def soft_overlong_penalty(max_completion_length: int, overlong_cache: int) -> SoftOverlongPenalty:
    """DAPO's soft over-long penalty: 0, then linearly down to -1 over the last `overlong_cache` tokens, -1 beyond."""
    return SoftOverlongPenalty(max_completion_length, overlong_cache)
