"""Read training records from files and turn each into a checked conversation: a list of {role, content}.

The data's path starts here: `load_conversations` → (templates) `encode` → `pack`/`collate` → loss.
Every problem is reported with the file, the line (or record index) and the field, before any training starts.

Accepted formats (detected per record unless `dataset_format` says otherwise):
- alpaca:   {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
- messages: {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}  (OpenAI style)
- sharegpt: {"conversations": [{"from": "human"|"gpt"|"system"|"observation"|"function_call", "value": str}, ...]}
            (or the same list with role/content keys)
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

logger = logging.getLogger(__name__)

# A single record larger than this is almost certainly a broken file (e.g. a whole JSON array on one line).
MAX_RECORD_BYTES = 4 * 1024 * 1024
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


class DataError(ValueError):
    """A malformed record or data file. The message names the file, the line and the field."""


@dataclass
class Conversation:
    """One training example: checked messages plus where it came from (for error messages and `dojo inspect`)."""

    messages: list[dict]
    source: str  # "file.jsonl:12"
    tools: Optional[list] = None  # function definitions offered to the model (OpenAI format), if any


@dataclass
class LoadReport:
    """What `load_conversations` read, kept and skipped (shown in logs and by `dojo inspect`)."""

    records: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def skip(self, error: DataError) -> None:
        self.skipped += 1
        kind = str(error).split(": ", 2)[-1].split(" (")[0][:80]
        self.skipped_reasons[kind] = self.skipped_reasons.get(kind, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(str(error))


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


def data_entries(path: str) -> list[str]:
    """Split a data path into its comma-separated entries (each a file, a folder or a hub dataset name)."""
    entries = [part.strip() for part in path.split(",") if part.strip()]
    if not entries:
        raise DataError(f"no data files in '{path}'")
    return entries


def entry_files(entry: str) -> list[Path]:
    """The data files of one local entry (a file, or every data file under a folder)."""
    candidate = Path(entry).expanduser()
    if candidate.is_dir():
        found = sorted(f for f in candidate.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file())
        if not found:
            raise DataError(f"{candidate}: folder has no {'/'.join(DATA_SUFFIXES)} files")
        return found
    if candidate.is_file():
        if candidate.suffix not in DATA_SUFFIXES:
            raise DataError(f"{candidate}: unsupported file type '{candidate.suffix}' (use .jsonl, .json or .parquet)")
        return [candidate]
    raise DataError(f"{candidate}: data file not found")


def iter_entry_records(entry: str) -> Iterator[tuple[str, Any]]:
    """Records of one entry: local files, or a `datasets` hub dataset ('org/name' or 'org/name:split') when online."""
    local = Path(entry).expanduser()
    if not local.exists() and HUB_NAME.match(entry):
        name, _, split = entry.partition(":")
        try:
            import datasets

            rows = datasets.load_dataset(name, split=split or "train")
        except Exception as err:  # noqa: BLE001 - any hub/network failure becomes one clear data error
            raise DataError(f"{entry}: not a local path, and loading it as a hub dataset failed: {err}") from None
        for index, row in enumerate(rows, start=1):
            yield f"{entry}[row {index}]", row
        return
    for file in entry_files(entry):
        yield from iter_raw_records(file)


def parse_ratios(ratios: Optional[str], count: int) -> list[float]:
    """`train_data_ratios` ('1,0.5'): one non-negative factor per data entry; None means all 1."""
    if ratios in (None, ""):
        return [1.0] * count
    try:
        values = [float(v) for v in str(ratios).split(",")]
    except ValueError:
        raise DataError(f"train_data_ratios '{ratios}': expected comma-separated numbers, e.g. 1,0.5") from None
    if len(values) != count or any(v < 0 for v in values):
        raise DataError(
            f"train_data_ratios '{ratios}': need {count} non-negative number(s), one per train_data_path entry"
        )
    return values


def apply_ratio(conversations: list[Conversation], ratio: float, seed: int) -> list[Conversation]:
    """Down-sample (ratio < 1) or repeat (ratio > 1) one source, deterministically, to mix datasets."""
    if ratio == 1.0 or not conversations:
        return conversations
    target = round(len(conversations) * ratio)
    whole, rest = divmod(target, len(conversations))
    shuffled = conversations[:]
    random.Random(seed).shuffle(shuffled)
    return conversations * whole + shuffled[:rest]


def iter_raw_records(file: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed JSON value or DataError) for each record of one file."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(file).to_pylist(), start=1):
            yield f"{file}:row {index}", row
        return
    if file.suffix == ".json":
        text = _read_text(file, f"{file}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(value, list):
            raise DataError(f"{file}: a .json data file must hold a list of records, got {type(value).__name__}")
        for index, record in enumerate(value, start=1):
            yield f"{file}:record {index}", record
        return
    with open(file, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{file}:{line_number}"
            if len(raw) > MAX_RECORD_BYTES:
                yield where, DataError(f"{where}: line is {len(raw):,} bytes, over the {MAX_RECORD_BYTES:,}-byte limit")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, DataError(f"{where}: invalid UTF-8 at byte {err.start} (re-save the file as UTF-8)")
                continue
            if not line.strip():
                continue  # blank lines are common at the end of jsonl files
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})")


def _read_text(file: Path, where: str) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: invalid UTF-8 at byte {err.start} (re-save the file as UTF-8)") from None


def detect_format(record: dict) -> Optional[str]:
    """Which format a record is in, by its keys; None when it fits none."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


def _text(value: Any, where: str, name: str, allow_empty: bool = False) -> str:
    """Check that a field holds a string (non-empty unless allowed)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def alpaca_user_text(instruction: str, extra_input: str) -> str:
    """The user turn of an alpaca record: the instruction, then the input on the next line when there is one."""
    return f"{instruction}\n{extra_input}" if extra_input.strip() else instruction


def alpaca_to_messages(record: dict, where: str) -> list[dict]:
    """{"instruction", "input"?, "output", "system"?, "history"?} → messages."""
    if "instruction" not in record:
        raise DataError(f"{where}: field 'instruction' is missing (alpaca records need 'instruction' and 'output')")
    if "output" not in record:
        raise DataError(f"{where}: field 'output' is missing (alpaca records need 'instruction' and 'output')")
    instruction = _text(record["instruction"], where, "instruction")
    extra_input = _text(record.get("input") or "", where, "input", allow_empty=True)
    output = _text(record["output"], where, "output")
    messages = []
    if record.get("system") is not None:
        messages.append({"role": "system", "content": _text(record["system"], where, "system")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [user, assistant] pairs, got {type(history).__name__}")
    for turn_index, pair in enumerate(history):
        name = f"history[{turn_index}]"
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}: field '{name}' must be a [user, assistant] pair")
        messages.append({"role": "user", "content": _text(pair[0], where, f"{name}[0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], where, f"{name}[1]")})
    messages.append({"role": "user", "content": alpaca_user_text(instruction, extra_input)})
    messages.append({"role": "assistant", "content": output})
    return messages


def list_to_messages(turns: Any, where: str, list_name: str, sharegpt: bool) -> list[dict]:
    """A messages / conversations list → checked messages with standard role names."""
    if not isinstance(turns, list):
        raise DataError(f"{where}: field '{list_name}' must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise DataError(f"{where}: field '{list_name}' is an empty list")
    messages = []
    for index, turn in enumerate(turns):
        name = f"{list_name}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field '{name}' must be an object with role and content, got {type(turn).__name__}")
        role_key, content_key = ("from", "value") if sharegpt and "from" in turn else ("role", "content")
        if role_key not in turn:
            raise DataError(f"{where}: field '{name}.{role_key}' is missing")
        role = turn[role_key]
        if not isinstance(role, str):
            raise DataError(f"{where}: field '{name}.{role_key}' must be a string, got {type(role).__name__}")
        mapped = SHAREGPT_ROLES.get(role) if sharegpt else (role if role in ROLES else None)
        if mapped is None:
            accepted = sorted(SHAREGPT_ROLES) if sharegpt else list(ROLES)
            raise DataError(f"{where}: field '{name}.{role_key}' has unknown role '{role}' (accepted: {', '.join(accepted)})")
        if not sharegpt and mapped == "assistant" and turn.get("tool_calls") is not None:
            # An assistant turn that calls tools may have no text; the calls are what gets trained.
            content = turn.get("content") or ""
            if not isinstance(content, str):
                raise DataError(f"{where}: field '{name}.content' must be a string, got {type(content).__name__}")
            messages.append({"role": "assistant", "content": content,
                             "tool_calls": check_tool_calls(turn["tool_calls"], where, f"{name}.tool_calls")})
            continue
        if content_key not in turn:
            raise DataError(f"{where}: field '{name}.{content_key}' is missing")
        content = _text(turn[content_key], where, f"{name}.{content_key}")
        message = {"role": mapped, "content": content}
        if mapped == "tool":  # keep the ids/names templates use to pair a result with its call
            message.update({k: turn[k] for k in ("tool_call_id", "name") if isinstance(turn.get(k), str)})
        messages.append(message)
    return messages


def check_tool_calls(calls: Any, where: str, name: str) -> list[dict]:
    """OpenAI-style tool calls: [{"type": "function", "function": {"name": str, "arguments": dict or JSON str}}]."""
    if not isinstance(calls, list) or not calls:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of tool calls")
    checked = []
    for index, call in enumerate(calls):
        field_name = f"{name}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise DataError(f"{where}: field '{field_name}.function' must be an object with name and arguments")
        if not isinstance(function.get("name"), str) or not function["name"].strip():
            raise DataError(f"{where}: field '{field_name}.function.name' must be a non-empty string")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise DataError(f"{where}: field '{field_name}.function.arguments' is not valid JSON") from None
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: field '{field_name}.function.arguments' must be an object")
        checked.append({**call, "type": call.get("type", "function"),
                        "function": {"name": function["name"], "arguments": arguments}})
    return checked


def check_turn_order(messages: list[dict], where: str) -> None:
    """System first (optional), then user/assistant alternating (tool results after an assistant), ending with an assistant."""
    body = messages
    if body and body[0]["role"] == "system":
        body = body[1:]
    if any(m["role"] == "system" for m in body):
        raise DataError(f"{where}: field 'role': a system message may only be the first message")
    if not body:
        raise DataError(f"{where}: conversation has no user or assistant turn")
    if body[0]["role"] != "user":
        raise DataError(f"{where}: field 'role': the first turn must be from the user, got '{body[0]['role']}'")
    previous = None
    for message in body:
        role = message["role"]
        allowed_after = {None: {"user"}, "user": {"assistant"}, "assistant": {"user", "tool"},
                         "tool": {"tool", "assistant"}}[previous]
        if role not in allowed_after:
            raise DataError(
                f"{where}: field 'role': turns must alternate user/assistant, but '{role}' follows '{previous}'"
            )
        previous = role
    if previous != "assistant":
        raise DataError(f"{where}: field 'role': the conversation must end with an assistant turn (nothing to train)")


def to_conversation(record: Any, where: str, dataset_format: str = "auto") -> Conversation:
    """Check one parsed record and convert it to a Conversation, or raise DataError."""
    if isinstance(record, DataError):
        raise record
    if not isinstance(record, dict):
        raise DataError(f"{where}: each record must be a JSON object, got {type(record).__name__}")
    kind = detect_format(record) if dataset_format == "auto" else dataset_format
    if kind is None:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            f"{where}: unknown record format (keys: {keys}); expected 'messages', 'conversations', "
            f"or 'instruction' + 'output'"
        )
    if kind == "alpaca":
        messages = alpaca_to_messages(record, where)
    elif kind == "messages":
        if "messages" not in record:
            raise DataError(f"{where}: field 'messages' is missing (dataset_format is 'messages')")
        messages = list_to_messages(record["messages"], where, "messages", sharegpt=False)
    elif kind == "sharegpt":
        if "conversations" not in record:
            raise DataError(f"{where}: field 'conversations' is missing (dataset_format is 'sharegpt')")
        messages = list_to_messages(record["conversations"], where, "conversations", sharegpt=True)
        if record.get("system") is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": _text(record["system"], where, "system")})
    else:
        raise DataError(f"{where}: unknown dataset_format '{kind}' (accepted: auto, alpaca, sharegpt, messages)")
    check_turn_order(messages, where)
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DataError(f"{where}: field 'tools' must be a list of function definitions (objects)")
    return Conversation(messages=messages, source=where, tools=tools or None)


def load_conversations(
    path: str,
    dataset_format: str = "auto",
    skip_invalid: bool = False,
    max_samples: Optional[int] = None,
    ratios: Optional[str] = None,
    seed: int = 0,
) -> tuple[list[Conversation], LoadReport]:
    """Read every record of `path`, check it, and return the conversations with a report.

    With skip_invalid false (the default) the first bad record raises DataError; with it true, bad records are
    skipped and counted. `ratios` mixes several comma-separated sources (see `apply_ratio`). A data path with no
    usable record is always an error.
    """
    entries = data_entries(path)
    factors = parse_ratios(ratios, len(entries))
    conversations: list[Conversation] = []
    report = LoadReport()
    for entry, factor in zip(entries, factors):
        from_entry: list[Conversation] = []
        for where, record in iter_entry_records(entry):
            report.records += 1
            try:
                from_entry.append(to_conversation(record, where, dataset_format))
            except DataError as err:
                if not skip_invalid:
                    raise
                report.skip(err)
        conversations += apply_ratio(from_entry, factor, seed)
    if max_samples is not None:
        conversations = conversations[:max_samples]
    if report.skipped:
        logger.warning("skipped %d invalid record(s) of %d: %s", report.skipped, report.records, report.skipped_reasons)
    if not conversations:
        raise DataError(f"{path}: no usable record (read {report.records}, skipped {report.skipped})")
    return conversations, report
