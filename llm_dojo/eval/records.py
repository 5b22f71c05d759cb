"""Evaluation records: the training formats, each split into a prompt and its reference answer.

Any SFT record works (alpaca, messages, sharegpt, prompt/completion; data/records.py checks it exactly as
training does). The reference is the last assistant turn (`output` for alpaca records); the prompt is every turn
before it. Two optional fields shape the report:

- `keywords`: a string or a list of strings; `contains` then asks whether the answer holds ANY of them
  (`["7", "seven"]`) instead of the whole reference.
- `group`: a name (`identity`, `general`, …); every answer metric is also reported per group (`identity/contains`).

Mistakes stop before any model loads, naming the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from llm_dojo.data.records import Conversation, to_conversation
from llm_dojo.data.sources import DataError, read_sources


@dataclass
class EvalRecord:
    """One checked record: the whole conversation (for the loss), its prompt and reference (for the answers)."""

    conversation: Conversation
    prompt: list[dict]
    reference: str
    keywords: Optional[list[str]] = None
    group: Optional[str] = None

    @property
    def source(self) -> str:
        return self.conversation.source


def _keywords(value: Any, where: str) -> Optional[list[str]]:
    if value is None:
        return None
    words = [value] if isinstance(value, str) else value
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise DataError(f"{where}: field 'keywords' must be a non-empty string or a list of non-empty strings, "
                        f"got {value!r}")
    return words


def to_eval_record(record: Any, where: str, dataset_format: str = "auto") -> EvalRecord:
    """Check one raw record as a conversation and split off its last answer as the reference."""
    conversation = to_conversation(record, where, dataset_format)  # also refuses non-objects, names file:line
    last = conversation.messages[-1]
    if not isinstance(last.get("content"), str) or not last["content"].strip():
        raise DataError(f"{where}: field 'content' of the last assistant turn has no text to compare answers with "
                        f"(a tool call?)")
    group = record.get("group")
    if group is not None and (not isinstance(group, str) or not group.strip() or "/" in group):
        raise DataError(f"{where}: field 'group' must be a non-empty name without '/', got {group!r}")
    return EvalRecord(conversation, conversation.messages[:-1], last["content"], _keywords(record.get("keywords"),
                                                                                          where), group)


def read_eval_records(path: str, dataset_format: str = "auto", limit: Optional[int] = None) -> list[EvalRecord]:
    """Every record of `path` (files, folders, comma lists: as training reads them) as EvalRecords."""
    records, _ = read_sources(path, lambda record, where: to_eval_record(record, where, dataset_format),
                              max_samples=limit)
    return records
