"""Reward functions by name (`reward_funcs: format, math_answer, my_pkg.rewards:fn`), and the weighted set of them
that scores a batch of completions.

`RewardSet` combines the functions as TRL's GRPOTrainer does (`_calculate_rewards` and its `sum_then_normalize`
aggregation): a None reward becomes NaN, and the total of a completion is the weighted sum of its non-NaN rewards
(`nansum`). A completion for which every function returned None gets a total of 0, with a warning. TRL 1.16 makes
that total NaN instead and keeps it out of its group's mean; a total of 0 keeps the totals finite for the plain
mean/std advantages and the held-out mean, and gives the same result in the usual case: a gold answer that cannot be
read makes every completion of its group abstain, so the group's totals are all 0 and their advantages 0.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import numbers
import re
from typing import Any, Callable, Optional, Union

import torch

from llm_dojo.config_io import ConfigError
from llm_dojo.rewards.builtin import (RewardError, format_reward, math_answer, soft_overlong_penalty,
                                      think_format)

logger = logging.getLogger(__name__)

BUILTINS = ("format", "math_answer", "length", "think_format")
# Names the reward call passes itself; a data column with one of these names would overwrite them.
RESERVED_NAMES = ("completions", "prompts", "completion_ids")


def resolve_reward(spec: str, *, format_pattern: Optional[str] = None, max_completion_length: Optional[int] = None,
                   overlong_cache: Optional[int] = None) -> Callable:
    """A reward function from a built-in name (format, math_answer, length, think_format) or `package.module:function`.

    `overlong_cache` (the `length` reward) defaults to a quarter of `max_completion_length`.
    """
    spec = spec.strip()
    if spec == "format":
        if not format_pattern:
            raise ConfigError("the 'format' reward needs 'reward_format_pattern': a regular expression the whole "
                              "completion must match, e.g. '<think>.+</think>.+'")
        try:
            return format_reward(format_pattern)
        except re.error as err:  # names the position of the mistake
            raise ConfigError(f"'reward_format_pattern' is not a valid regular expression: {err}") from None
    if spec == "length":
        if max_completion_length is None:
            raise ConfigError("the 'length' reward needs 'max_completion_length' (the penalty grows as a completion "
                              "approaches it)")
        cache = max_completion_length // 4 if overlong_cache is None else overlong_cache
        try:
            return soft_overlong_penalty(max_completion_length, cache)
        except RewardError as err:
            raise ConfigError(str(err)) from None
    if spec == "math_answer":
        try:
            import math_verify  # noqa: F401 - checked here so a missing package fails before training starts
        except ImportError:
            raise ConfigError("the 'math_answer' reward needs the math-verify package: pip install math-verify") \
                from None
        return math_answer
    if spec == "think_format":
        return think_format
    if ":" in spec:
        return import_reward(spec)
    close = difflib.get_close_matches(spec, BUILTINS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown reward '{spec}' in 'reward_funcs'{hint}: use a built-in ({', '.join(BUILTINS)}) or "
                      f"package.module:function")


def import_reward(spec: str) -> Callable:
    """Import `package.module:function` (the function may be a dotted path inside the module, e.g. `Class.method`)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward '{spec}' in 'reward_funcs': write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name or module_name.startswith(f"{err.name}."):  # the module or its package is missing
            raise ConfigError(f"reward '{spec}': module '{module_name}' not found; install it, or run from the "
                              f"folder that holds it (or add that folder to PYTHONPATH)") from None
        raise ConfigError(f"reward '{spec}': importing module '{module_name}' failed: {err}") from err
    except Exception as err:
        raise ConfigError(f"reward '{spec}': importing module '{module_name}' failed: {type(err).__name__}: "
                          f"{err}") from err
    function: Any = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            close = difflib.get_close_matches(attribute, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"reward '{spec}': module '{module_name}' has no attribute '{attribute}'{hint}")
        function = getattr(function, part)
    if not callable(function):
        raise ConfigError(f"reward '{spec}': '{attribute}' is a {type(function).__name__}, not a function")
    if inspect.iscoroutinefunction(function):
        raise ConfigError(f"reward '{spec}': async reward functions are not supported; make it a plain function")
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature to read
        return function
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise ConfigError(f"reward '{spec}': the function must accept **kwargs, as TRL's reward functions do (it is "
                          f"called with completions, prompts, completion_ids and every data column)")
    return function


def split_list(value: Union[str, list, tuple, None], key: str) -> list[str]:
    """A comma-separated config value (or a list) → its stripped items; an empty item is an error naming `key`."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() if isinstance(item, str) else item for item in items]
    if any(item == "" for item in items):
        raise ConfigError(f"'{key}' has an empty entry: {value!r}")
    return items


class RewardSet:
    """Named reward functions with weights: scores completions per function and as a weighted total."""

    def __init__(self, functions: dict[str, Callable], weights: Optional[list[float]] = None):
        if not functions:
            raise ConfigError("no reward functions: set 'reward_funcs' (e.g. math_answer, think_format)")
        weights = [1.0] * len(functions) if weights is None else list(weights)
        if len(weights) != len(functions):
            raise ConfigError(f"'reward_weights' has {len(weights)} values for {len(functions)} reward functions "
                              f"({', '.join(functions)})")
        for weight in weights:
            if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigError(f"'reward_weights' must be finite numbers, got {weight!r}")
        self.functions = dict(functions)
        self.names = list(functions)
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float32)

    @classmethod
    def from_config(cls, specs: Union[list[str], str], weights: Union[list[float], str, None] = None,
                    **builtin_options) -> "RewardSet":
        """Resolve each spec (`reward_funcs`, a list or comma-separated) with the built-ins' options; weights
        (`reward_weights`) default to 1 each."""
        names = split_list(specs, "reward_funcs")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"'reward_funcs' lists {duplicates[0]!r} twice; give it a larger weight instead")
        if builtin_options.get("format_pattern") and "format" not in names:
            logger.warning("'reward_format_pattern' is set but 'format' is not among reward_funcs: it is not used")
        if builtin_options.get("overlong_cache") is not None and "length" not in names:
            logger.warning("'overlong_cache' is set but 'length' is not among reward_funcs: it is not used")
        values = split_list(weights, "reward_weights") if weights is not None else None
        if values is not None:
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError):
                raise ConfigError(f"'reward_weights' must be numbers, got {weights!r}") from None
        return cls({name: resolve_reward(name, **builtin_options) for name in names}, values)

    def __call__(self, completions: list, prompts: Optional[list] = None, columns: Optional[dict[str, list]] = None,
                 completion_ids: Optional[list] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total (N,), {name: rewards (N,)}): one reward per completion and function (None → NaN), and their
        weighted nansum (0 where every function returned None)."""
        count = len(completions)
        columns = dict(columns or {})
        for name, values in columns.items():
            if name in RESERVED_NAMES:
                raise RewardError(f"data column '{name}' clashes with an argument of the reward call; rename it")
            if not isinstance(values, (list, tuple)) or len(values) != count:
                got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
                raise RewardError(f"data column '{name}' must hold one value per completion ({count}), got {got}")
        per_function = {}
        for name, function in self.functions.items():
            try:
                values = function(completions=completions, prompts=prompts, completion_ids=completion_ids, **columns)
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(f"reward function '{name}' failed: {type(err).__name__}: {err}") from err
            per_function[name] = checked_rewards(values, count, name)
        table = torch.stack([per_function[name] for name in self.names], dim=1)  # (N, functions)
        total = (table * self.weights.unsqueeze(0)).nansum(dim=1)
        unscorable = torch.isnan(table).all(dim=1)
        if unscorable.any():
            first = int(unscorable.nonzero()[0])
            row = {key: values[first] for key, values in columns.items()}
            logger.warning(f"{int(unscorable.sum())} of {count} completions got None from every reward function "
                           f"(first: completion {first}, columns {str(row)[:300]}); their total is 0; check that "
                           f"the gold columns can be read")
        return total, per_function


def checked_rewards(values: Any, count: int, name: str) -> torch.Tensor:
    """A reward function's output → a float32 tensor (None → NaN), or a RewardError naming the function."""
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward function '{name}' must return a list of rewards, got {type(values).__name__}")
    if len(values) != count:
        raise RewardError(f"reward function '{name}' returned {len(values)} rewards for {count} completions (one "
                          f"per completion, None where it does not apply)")
    for index, value in enumerate(values):
        if value is not None and not (isinstance(value, numbers.Real) and not math.isinf(value)):
            raise RewardError(f"reward function '{name}' returned {value!r} for completion {index}: a reward must be "
                              f"a finite number, or None where it does not apply")
    return torch.tensor([math.nan if value is None else float(value) for value in values], dtype=torch.float32)
