"""Prompts for RL (stage: grpo): what the policy answers, plus the columns its reward functions read.

The data's path: `sources.read_sources` → `to_prompt_record` (here) → `encode_prompts` (here: the official chat
template with the assistant header the model continues from) → sampled completions and rewards in recipes/rl.py.

Accepted records (one per line of a jsonl file, or one per row of json/parquet):
    {"prompt": str | messages, ...columns}
    {"messages": [... ending with a user turn], ...columns}
    {"instruction", "input"?, "system"?, ...columns}                         (alpaca style)
Every other field (for example "solution" or "answer" for the math_answer reward) is a column: reward functions
receive it as a keyword argument holding one value per completion, as TRL's reward functions do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from llm_dojo.data.records import _text, prompt_messages
from llm_dojo.data.sources import DataError, LoadReport, read_sources

logger = logging.getLogger(__name__)

PROMPT_FIELDS = ("prompt", "messages", "instruction", "input", "system")
# Names our reward call passes itself; a data column with one of these names would be silently overwritten.
RESERVED_COLUMNS = ("completions", "prompts", "completion_ids")


@dataclass
class PromptRecord:
    """Messages ending with a user turn, and the record's other fields (the reward functions' columns)."""

    messages: list[dict]
    columns: dict[str, Any]
    source: str  # "file.jsonl:12"


def to_prompt_record(record: Any, where: str) -> PromptRecord:
    """One raw record → a PromptRecord, or a DataError naming the file, line and field."""
    messages = prompt_messages(record, where)
    if record.get("system") is not None and messages[0]["role"] != "system":  # alpaca's system field, as in SFT
        messages = [{"role": "system", "content": _text(record["system"], where, "system")}] + messages
    columns = {key: value for key, value in record.items() if key not in PROMPT_FIELDS}
    clash = [key for key in columns if key in RESERVED_COLUMNS]
    if clash:
        raise DataError(f"{where}: field '{clash[0]}' is a name the reward call uses itself; rename the column")
    return PromptRecord(messages, columns, where)


def with_system_prompt(messages: list[dict], system: Optional[str]) -> list[dict]:
    """Put `system` first unless the prompt already has a system message."""
    if not system or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}] + messages


@dataclass
class PreparedPrompts:
    """Encoded prompts: each item has `prompt_ids`, `messages`, `columns` and `source`."""

    train: list[dict]
    eval: Optional[list[dict]]
    report: LoadReport
    dropped_too_long: int = 0
    columns: list[str] = field(default_factory=list)


def encode_prompts(records: list[PromptRecord], tokenizer, system: Optional[str], max_prompt_len: int
                   ) -> tuple[list[dict], int]:
    """Render each prompt with the official template and the assistant header; drop (and count) prompts longer
    than max_prompt_len, since a cut prompt would ask a different question."""
    items, dropped = [], 0
    for record in records:
        messages = with_system_prompt(record.messages, system)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own special tokens
        if len(ids) > max_prompt_len:
            dropped += 1
            continue
        items.append({"prompt_ids": ids, "messages": messages, "columns": record.columns, "source": record.source})
    return items, dropped


def prepare_prompts(data, rl, tokenizer, seed: int = 0) -> PreparedPrompts:
    """Read, check and encode the prompts of a DataArguments section (and rl.eval_prompts_path, if set).

    A prompt may take up to max_len − max_completion_length tokens, so prompt and completion fit in max_len.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("stage grpo renders prompts with the tokenizer's chat template, and this tokenizer has none; "
                        "use a chat/instruct model")
    max_prompt_len = data.max_len - rl.max_completion_length
    if max_prompt_len < 1:
        raise DataError(f"max_len ({data.max_len}) leaves no room for a prompt beside max_completion_length "
                        f"({rl.max_completion_length}); raise max_len")
    records, report = read_sources(data.train_data_path, to_prompt_record, skip_invalid=data.skip_invalid,
                                   max_samples=data.max_samples, ratios=data.train_data_ratios, seed=seed)
    train, dropped = encode_prompts(records, tokenizer, rl.system_prompt, max_prompt_len)
    if not train:
        raise DataError(f"{data.train_data_path}: every prompt is longer than {max_prompt_len} tokens "
                        f"(max_len − max_completion_length)")
    held_out = None
    eval_path = rl.eval_prompts_path or data.eval_data_path
    if eval_path:
        eval_records, _ = read_sources(eval_path, to_prompt_record, skip_invalid=data.skip_invalid)
        held_out, _ = encode_prompts(eval_records, tokenizer, rl.system_prompt, max_prompt_len)
    columns = sorted({key for item in train for key in item["columns"]})
    logger.info("prompts: %d read, %d skipped, %d longer than %d tokens dropped; columns for rewards: %s",
                report.records, report.skipped, dropped, max_prompt_len, ", ".join(columns) or "none")
    return PreparedPrompts(train, held_out, report, dropped, columns)
