"""Reward functions for stage: grpo: the built-ins on known answers, parity with TRL's own, loading
`package.module:function`, and how RewardSet weights and combines rewards (None → NaN, as TRL's GRPOTrainer)."""

from __future__ import annotations

import logging
import math
import pickle
import sys
import textwrap

import pytest
import torch
from trl.rewards import get_soft_overlong_punishment, think_format_reward

from llm_dojo.config_io import ConfigError
from llm_dojo.rewards import (RewardError, RewardSet, completion_text, format_reward, math_answer, resolve_reward,
                              soft_overlong_penalty, think_format)


def chat(text: str) -> list[dict]:
    """TRL's conversational completion shape."""
    return [{"role": "assistant", "content": text}]


# --- completion_text ------------------------------------------------------------------------------------------------

def test_completion_text_reads_strings_messages_and_content_blocks():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("hi")) == "hi"
    assert completion_text({"role": "assistant", "content": "one message"}) == "one message"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]) == "ab"
    tool_use = [{"role": "assistant", "content": "calling"}, {"role": "tool", "content": "4"},
                {"role": "assistant", "content": "final"}]
    assert completion_text(tool_use) == "final"


def test_completion_text_rejects_what_is_not_a_completion():
    with pytest.raises(RewardError, match="string or a list of messages"):
        completion_text(42)
    with pytest.raises(RewardError, match=r"assistant message, got \[tool\]"):
        completion_text([{"role": "tool", "content": "4"}])


# --- format ---------------------------------------------------------------------------------------------------------

def test_format_reward_needs_the_whole_completion_to_match():
    reward = format_reward(r"<think>.+</think>\s*<answer>.+</answer>")
    completions = [
        "<think>2+2</think>\n<answer>4</answer>",
        "  <think>line one\nline two</think><answer>4</answer>\n",  # surrounding whitespace, newlines inside
        "Sure! <think>2+2</think><answer>4</answer>",                # text before: search would accept it
        "<think>2+2</think><answer>4</answer> and more",             # text after
        "<answer>4</answer>",
    ]
    assert reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert reward([chat(c) for c in completions]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_format_reward_accepts_surrounding_text_only_when_the_pattern_says_so():
    assert format_reward(r".*<answer>.+</answer>.*")(["Sure! <answer>4</answer> done"]) == [1.0]


# --- think_format vs TRL's think_format_reward ---------------------------------------------------------------------

AGREED_WITH_TRL = {
    "<think>\nreasoning\n</think>\nanswer": 1.0,
    "<think>r</think>a": 1.0,
    "<think>reasoning\nanswer": 0.0,          # never closed
    "reasoning</think>answer": 0.0,           # never opened
    "answer <think>r</think>": 0.0,           # not first
    "<think>a<think>b</think>c": 0.0,         # nested
    "": 0.0,
    "plain answer": 0.0,
}
# Deliberate differences (documented in think_format): ours, TRL's.
DIFFERS_FROM_TRL = {
    "<think>reasoning</think>": (0.0, 1.0),          # no answer after the reasoning
    "<think>reasoning</think>  \n ": (0.0, 1.0),     # only whitespace after it
    "<think></think>42": (0.0, 1.0),                 # empty reasoning
    "<think>r</think>a</think>b": (0.0, 1.0),        # a second closing tag
    "\n<think>r</think>a": (1.0, 0.0),               # leading whitespace is ignored, as in `format`
}


def test_think_format_agrees_with_trl_on_ordinary_completions():
    texts = list(AGREED_WITH_TRL)
    trl = think_format_reward([chat(t) for t in texts])
    assert trl == list(AGREED_WITH_TRL.values())
    assert think_format([chat(t) for t in texts]) == trl
    assert think_format(texts) == trl


def test_think_format_differs_from_trl_only_where_documented():
    texts = list(DIFFERS_FROM_TRL)
    assert think_format(texts) == [ours for ours, _ in DIFFERS_FROM_TRL.values()]
    assert think_format_reward([chat(t) for t in texts]) == [trl for _, trl in DIFFERS_FROM_TRL.values()]


# --- math_answer ----------------------------------------------------------------------------------------------------

def test_math_answer_scores_equal_wrong_and_unreadable_gold():
    completions = ["\\boxed{1/2}", "The answer is \\boxed{\\frac{1}{2}}", "The answer is 0.5", "\\boxed{0.6}",
                   "no answer given", "\\boxed{7}", "\\boxed{7}"]
    answers = ["0.5", "0.5", "\\frac{1}{2}", "0.5", "0.5", "see the figure", None]
    assert math_answer(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, None, None]
    assert math_answer([chat(c) for c in completions], answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, None, None]


def test_math_answer_reads_a_bare_gold_answer_as_latex():
    # Parsed as written, "2x+3" would give the number 2 and "3\sqrt{2}" the number 3.
    completions = ["\\boxed{3+2x}", "\\boxed{2}", "\\boxed{\\sqrt{18}}", "\\boxed{3}", "\\boxed{(1, 2)}"]
    answers = ["2x+3", "2x+3", "3\\sqrt{2}", "3\\sqrt{2}", "(1,2)"]
    assert math_answer(completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_math_answer_reads_gsm8k_answers_after_the_hashes_and_numbers():
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    completions = ["The answer is 72", "Answer: 72", "She sold 24 clips in May, 72 in all.", "The answer is 24",
                   "\\boxed{1000}"]
    assert math_answer(completions, answer=[gold] * 4 + ["1,000"]) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert math_answer(["\\boxed{72}", "\\boxed{0.25}"], answer=[72, 0.25]) == [1.0, 1.0]


def test_math_answer_reads_the_answer_after_the_reasoning():
    # Read as a whole, the boxed 3 in the reasoning would be taken first (boxed answers are tried before anchored ones).
    completion = "<think>is it \\boxed{3}? no.</think> The answer is 4"
    assert math_answer([completion, completion], answer=["4", "3"]) == [1.0, 0.0]


def test_math_answer_prefers_the_answer_column_then_solution():
    worked = "We halve it: $\\frac{1}{2}$, so the answer is $\\boxed{\\frac{1}{2}}$."
    assert math_answer(["\\boxed{0.5}"], solution=[worked]) == [1.0]
    assert math_answer(["\\boxed{0.5}"], answer=["0.5"], solution=["\\boxed{3}"]) == [1.0]
    with pytest.raises(RewardError, match=r"field 'answer' or 'solution'.*present: \['gold'\]"):
        math_answer(["\\boxed{1}"], gold=["1"])
    with pytest.raises(RewardError, match=r"column 'answer' must hold one value per completion \(2\), got 1"):
        math_answer(["\\boxed{1}", "\\boxed{2}"], answer=["1"])


# --- length: DAPO's soft over-long penalty vs TRL's get_soft_overlong_punishment ------------------------------------

@pytest.mark.parametrize("max_length, cache", [(100, 20), (100, 0), (100, 100), (64, 16), (7, 3), (1, 0)])
def test_length_penalty_equals_trl_on_every_length(max_length, cache):
    completion_ids = [[5] * n for n in range(0, max_length + 30)]
    ours = soft_overlong_penalty(max_length, cache)(["x"] * len(completion_ids), completion_ids=completion_ids)
    trl = get_soft_overlong_punishment(max_length, cache)(completion_ids=completion_ids)
    assert ours == pytest.approx(trl, abs=0, rel=0)


def test_length_penalty_values_at_the_edges():
    penalty = soft_overlong_penalty(100, 20)
    lengths = [0, 80, 81, 90, 100, 101, 500]
    assert penalty(["x"] * 7, completion_ids=[[1] * n for n in lengths]) == [0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0]


def test_length_penalty_needs_token_ids_and_a_sane_cache():
    with pytest.raises(RewardError, match="needs completion_ids"):
        soft_overlong_penalty(100, 20)(["x"])
    with pytest.raises(RewardError, match="2 completion_ids for 1 completions"):
        soft_overlong_penalty(100, 20)(["x"], completion_ids=[[1], [2]])
    with pytest.raises(RewardError, match="'overlong_cache' must be between 0 and max_completion_length"):
        soft_overlong_penalty(100, 101)


def test_configurable_rewards_survive_pickling():
    for reward in (format_reward(r"<a>.+</a>"), soft_overlong_penalty(10, 5)):
        copy = pickle.loads(pickle.dumps(reward))
        kwargs = {"completion_ids": [[1] * 8]}
        assert copy(["<a>x</a>"], **kwargs) == reward(["<a>x</a>"], **kwargs)


# --- resolve_reward ------------------------------------------------------------------------------------------------

CUSTOM_MODULE = textwrap.dedent('''
    def shouting(completions, prompts=None, **kwargs):
        return [1.0 if c.isupper() else 0.0 for c in completions]

    def by_level(completions, level, **kwargs):
        return [None if lv is None else float(lv) for lv in level]

    def no_kwargs(completions):
        return [0.0 for _ in completions]

    NOT_A_FUNCTION = 3
''')


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    """A module `dojo_custom_rewards` on sys.path, removed again afterwards."""
    (tmp_path / "dojo_custom_rewards.py").write_text(CUSTOM_MODULE)
    (tmp_path / "dojo_broken_rewards.py").write_text("import dojo_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "dojo_custom_rewards"
    for name in ("dojo_custom_rewards", "dojo_broken_rewards"):
        sys.modules.pop(name, None)


def test_resolve_reward_finds_builtins_with_their_options():
    assert resolve_reward("think_format") is think_format
    assert resolve_reward(" math_answer ") is math_answer
    assert resolve_reward("format", format_pattern="a+")(["aaa", "ab"]) == [1.0, 0.0]
    # overlong_cache defaults to a quarter of max_completion_length: 0 up to 75 tokens, then down by 1/25 a token.
    length = resolve_reward("length", max_completion_length=100)
    assert length(["x"] * 3, completion_ids=[[1] * 75, [1] * 90, [1] * 101]) == [0.0, -0.6, -1.0]
    length = resolve_reward("length", max_completion_length=100, overlong_cache=20)
    assert length(["x"], completion_ids=[[1] * 90]) == [-0.5]


def test_resolve_reward_errors_name_the_config_key():
    with pytest.raises(ConfigError, match="'format' reward needs 'reward_format_pattern'"):
        resolve_reward("format")
    with pytest.raises(ConfigError, match="'reward_format_pattern' is not a valid regular expression"):
        resolve_reward("format", format_pattern="<think>(.+")
    with pytest.raises(ConfigError, match="'length' reward needs 'max_completion_length'"):
        resolve_reward("length")
    with pytest.raises(ConfigError, match="'overlong_cache' must be between 0 and max_completion_length"):
        resolve_reward("length", max_completion_length=10, overlong_cache=-1)
    with pytest.raises(ConfigError, match="unknown reward 'math_answers'.*did you mean 'math_answer'"):
        resolve_reward("math_answers")


def test_resolve_reward_imports_module_functions(custom_module):
    shouting = resolve_reward(f"{custom_module}:shouting")
    assert shouting(["HEY", "hey"]) == [1.0, 0.0]
    assert resolve_reward("llm_dojo.rewards.builtin:think_format") is think_format


def test_resolve_reward_import_errors_are_clear(custom_module):
    with pytest.raises(ConfigError, match="module 'dojo_nowhere' not found"):
        resolve_reward("dojo_nowhere:fn")
    with pytest.raises(ConfigError, match="importing module 'dojo_broken_rewards' failed.*dojo_no_such_dependency"):
        resolve_reward("dojo_broken_rewards:fn")
    with pytest.raises(ConfigError, match="has no attribute 'shoutin'.*did you mean 'shouting'"):
        resolve_reward(f"{custom_module}:shoutin")
    with pytest.raises(ConfigError, match="'NOT_A_FUNCTION' is a int, not a function"):
        resolve_reward(f"{custom_module}:NOT_A_FUNCTION")
    with pytest.raises(ConfigError, match=r"must accept \*\*kwargs"):
        resolve_reward(f"{custom_module}:no_kwargs")
    with pytest.raises(ConfigError, match="write it as package.module:function"):
        resolve_reward(":fn")


# --- RewardSet ------------------------------------------------------------------------------------------------------

def fixed(values):
    """A reward function that returns `values` whatever it is given."""
    def reward(completions, **kwargs):
        return values
    return reward


def test_reward_set_total_is_the_weighted_nansum_and_zero_when_nothing_applies(caplog):
    rewards = RewardSet({"a": fixed([1.0, None, 0.5, None]), "b": fixed([0.5, 1.0, None, None])}, weights=[2.0, -1.0])
    with caplog.at_level(logging.WARNING, logger="llm_dojo.rewards.registry"):
        total, per_function = rewards(["w", "x", "y", "z"], columns={"answer": ["1", "2", "3", "4"]})
    # By hand: 2·1 − 0.5 = 1.5; only b: −1; only a: 2·0.5 = 1; neither: 0, with a warning.
    assert total.tolist() == [1.5, -1.0, 1.0, 0.0]
    table = torch.stack([per_function["a"], per_function["b"]], dim=1)  # TRL's sum_then_normalize total
    assert torch.equal(total, (table * torch.tensor([2.0, -1.0])).nansum(dim=1))
    assert rewards.names == ["a", "b"]
    assert per_function["a"][[0, 2]].tolist() == [1.0, 0.5] and torch.isnan(per_function["a"][[1, 3]]).all()
    assert per_function["b"][:2].tolist() == [0.5, 1.0] and torch.isnan(per_function["b"][2:]).all()
    assert total.shape == (4,) and total.dtype == torch.float32
    assert "1 of 4 completions got None from every reward function (first: completion 3" in caplog.text
    assert "'answer': '4'" in caplog.text


def test_reward_set_weight_zero_still_counts_as_scored():
    total, _ = RewardSet({"a": fixed([1.0, None]), "b": fixed([None, 3.0])}, weights=[0.0, 1.0])(["x", "y"])
    assert total.tolist() == [0.0, 3.0]


def test_reward_set_passes_columns_prompts_and_ids_as_trl_does():
    seen = {}

    def spy(completions, prompts=None, completion_ids=None, **kwargs):
        seen.update(completions=completions, prompts=prompts, completion_ids=completion_ids, **kwargs)
        return [0.0] * len(completions)

    RewardSet({"spy": spy})(["c1", "c2"], ["p1", "p2"], {"answer": ["1", "2"], "level": [3, 4]}, [[1], [2, 3]])
    assert seen == {"completions": ["c1", "c2"], "prompts": ["p1", "p2"], "completion_ids": [[1], [2, 3]],
                    "answer": ["1", "2"], "level": [3, 4]}


def test_reward_set_from_config_with_builtins_and_a_module_function(custom_module):
    rewards = RewardSet.from_config(f"math_answer, think_format, length, {custom_module}:by_level", "1, 0.5, 1, 2",
                                    max_completion_length=10, overlong_cache=2)
    assert rewards.names == ["math_answer", "think_format", "length", f"{custom_module}:by_level"]
    completions = [chat("<think>halve</think>\\boxed{1/2}"), chat("\\boxed{3}")]
    total, per_function = rewards(completions, None, {"answer": ["0.5", "hello world"], "level": [None, 1]},
                                  [[1] * 4, [1] * 9])
    assert per_function["math_answer"][0] == 1.0 and torch.isnan(per_function["math_answer"][1])
    assert per_function["think_format"].tolist() == [1.0, 0.0]
    assert per_function["length"].tolist() == [0.0, -0.5]
    # 1·1 + 0.5·1 + 0 + (None) = 1.5;  (None) + 0 + 1·(−0.5) + 2·1 = 1.5
    assert total.tolist() == [1.5, 1.5]


def test_reward_set_config_errors():
    with pytest.raises(ConfigError, match="'reward_weights' has 1 values for 2 reward functions"):
        RewardSet.from_config(["think_format", "math_answer"], [1.0])
    with pytest.raises(ConfigError, match="'reward_weights' must be numbers"):
        RewardSet.from_config("think_format", "heavy")
    with pytest.raises(ConfigError, match="lists 'think_format' twice"):
        RewardSet.from_config("think_format,think_format")
    with pytest.raises(ConfigError, match="'reward_funcs' has an empty entry"):
        RewardSet.from_config("think_format,,math_answer")
    with pytest.raises(ConfigError, match="no reward functions"):
        RewardSet.from_config([])


@pytest.mark.parametrize("output, message", [
    ([1.0], r"reward function 'bad' returned 1 rewards for 2 completions"),
    (torch.tensor([1.0, 0.0]), r"reward function 'bad' must return a list of rewards, got Tensor"),
    ([1.0, "1"], r"reward function 'bad' returned '1' for completion 1: a reward must be a finite number"),
    ([1.0, math.inf], r"reward function 'bad' returned inf for completion 1"),
])
def test_reward_set_names_the_function_that_returns_something_wrong(output, message):
    rewards = RewardSet({"good": fixed([0.0, 0.0]), "bad": fixed(output)})
    with pytest.raises(RewardError, match=message):
        rewards(["x", "y"])


def test_reward_set_names_the_function_that_raises_and_checks_columns():
    def broken(completions, **kwargs):
        raise KeyError("solution")

    with pytest.raises(RewardError, match="reward function 'broken' failed: KeyError: 'solution'"):
        RewardSet({"broken": broken})(["x"])
    with pytest.raises(RewardError, match=r"data column 'answer' must hold one value per completion \(2\), got 1"):
        RewardSet({"good": fixed([0.0, 0.0])})(["x", "y"], columns={"answer": ["1"]})
    with pytest.raises(RewardError, match="data column 'completion_ids' clashes"):
        RewardSet({"good": fixed([0.0])})(["x"], columns={"completion_ids": [[1]]})
