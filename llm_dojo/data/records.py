"""SFT records: each raw record (from `sources`) becomes a checked conversation, a list of {role, content}.

The data's path: `sources.read_sources` → `to_conversation` (here) → `encode` → `batching` → loss.
Every problem is reported with the file, the line (or record index) and the field, before any training starts.

Accepted formats (detected per record unless `dataset_format` says otherwise):
- alpaca:     {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
- messages:   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}  (OpenAI style;
              content may also be a list of text parts, [{"type": "text", "text": str}, ...])
- sharegpt:   {"conversations": [{"from": "human"|"gpt"|"system"|"observation"|"function_call", "value": str}, ...]}
              (or the same list with role/content keys)
- completion: {"prompt": str | messages, "completion": str | messages}  (TRL's prompt-completion format; a string
              prompt is one user turn, a string completion one assistant turn)

`check_messages` is THE message validator: training, `dojo generate`, `dojo chat` and `dojo serve` all use it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

from llm_dojo.data.sources import MAX_RECORD_BYTES, DataError, LoadReport, read_sources  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

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


@dataclass
class Conversation:
    """One training example: checked messages plus where it came from (for error messages and `dojo inspect`)."""

    messages: list[dict]
    source: str  # "file.jsonl:12"
    tools: Optional[list] = None  # function definitions offered to the model (OpenAI format), if any


def detect_format(record: dict) -> Optional[str]:
    """Which format a record is in, by its keys; None when it fits none."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "completion"
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


def content_text(content: Any, where: str, name: str) -> Any:
    """OpenAI content parts ([{"type": "text", "text": ...}, ...]) joined into one string; other values unchanged."""
    if not isinstance(content, list):
        return content
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise DataError(f"{where}: field '{name}' must be a string or a list of text parts "
                            f"[{{\"type\": \"text\", \"text\": ...}}]; item {index} is {kind!r} "
                            f"(images and audio are not supported)")
        texts.append(part["text"])
    return "".join(texts)


def check_messages(turns: Any, where: str, list_name: str = "messages", sharegpt: bool = False) -> list[dict]:
    """A messages / conversations list → checked messages with standard role names (THE message validator)."""
    return list_to_messages(turns, where, list_name, sharegpt)


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
            content = content_text(turn.get("content") or "", where, f"{name}.content")
            if not isinstance(content, str):
                raise DataError(f"{where}: field '{name}.content' must be a string, got {type(content).__name__}")
            messages.append({"role": "assistant", "content": content,
                             "tool_calls": check_tool_calls(turn["tool_calls"], where, f"{name}.tool_calls")})
            continue
        if content_key not in turn:
            raise DataError(f"{where}: field '{name}.{content_key}' is missing")
        content = _text(content_text(turn[content_key], where, f"{name}.{content_key}"), where,
                        f"{name}.{content_key}")
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


def check_turn_order(messages: list[dict], where: str, ends_with: str = "assistant") -> None:
    """System first (optional), then user/assistant alternating (tool results after an assistant).

    `ends_with="assistant"`: a training conversation (something to train); `"user"`: a prompt the model answers
    (a user or tool turn last, as chat, generate and serve send it).
    """
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
    if ends_with == "assistant" and previous != "assistant":
        raise DataError(f"{where}: field 'role': the conversation must end with an assistant turn (nothing to train)")
    if ends_with == "user" and previous == "assistant":
        raise DataError(f"{where}: field 'role': a prompt must end with a user (or tool) turn, not an assistant turn")


def completion_to_messages(record: dict, where: str) -> list[dict]:
    """TRL's {"prompt", "completion"}: each a string (one user / one assistant turn) or a list of messages."""
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": _text(prompt, where, "prompt")}]
    else:
        messages = check_messages(prompt, where, "prompt")
    if isinstance(completion, str):
        return messages + [{"role": "assistant", "content": _text(completion, where, "completion")}]
    answers = check_messages(completion, where, "completion")
    if any(m["role"] != "assistant" for m in answers):
        raise DataError(f"{where}: field 'completion' may only hold assistant messages")
    return messages + answers


def to_conversation(record: Any, where: str, dataset_format: str = "auto") -> Conversation:
    """Check one parsed record and convert it to a Conversation, or raise DataError."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: each record must be a JSON object, got {type(record).__name__}")
    kind = detect_format(record) if dataset_format == "auto" else dataset_format
    if kind is None:
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            f"{where}: unknown record format (keys: {keys}); expected 'messages', 'conversations', "
            f"'instruction' + 'output', or 'prompt' + 'completion'"
        )
    if kind == "alpaca":
        messages = alpaca_to_messages(record, where)
    elif kind == "messages":
        if "messages" not in record:
            raise DataError(f"{where}: field 'messages' is missing (dataset_format is 'messages')")
        messages = check_messages(record["messages"], where, "messages")
    elif kind == "sharegpt":
        if "conversations" not in record:
            raise DataError(f"{where}: field 'conversations' is missing (dataset_format is 'sharegpt')")
        messages = check_messages(record["conversations"], where, "conversations", sharegpt=True)
        if record.get("system") is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": _text(record["system"], where, "system")})
    elif kind == "completion":
        for name in ("prompt", "completion"):
            if name not in record:
                raise DataError(f"{where}: field '{name}' is missing (prompt-completion records need both)")
        messages = completion_to_messages(record, where)
    else:
        raise DataError(f"{where}: unknown dataset_format '{kind}' (accepted: auto, alpaca, sharegpt, messages, "
                        f"completion)")
    check_turn_order(messages, where)
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DataError(f"{where}: field 'tools' must be a list of function definitions (objects)")
    return Conversation(messages=messages, source=where, tools=tools or None)


def prompt_messages(record: Any, where: str) -> list[dict]:
    """A prompt record for inference → messages ending with a user turn.

    Accepts {"messages": [...]}, {"prompt": str | messages} and {"instruction", "input"?} (joined as in training).
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = check_messages(record["messages"], where, "messages")
    elif "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": _text(prompt, where, "prompt")}]
        else:
            messages = check_messages(prompt, where, "prompt")
    elif "instruction" in record:
        instruction = _text(record["instruction"], where, "instruction")
        extra_input = _text(record.get("input") or "", where, "input", allow_empty=True)
        messages = [{"role": "user", "content": alpaca_user_text(instruction, extra_input)}]
    else:
        raise DataError(f"{where}: no 'prompt', 'instruction' or 'messages' field (fields present: {sorted(record)})")
    check_turn_order(messages, where, ends_with="user")
    return messages


def load_conversations(
    path: str,
    dataset_format: str = "auto",
    skip_invalid: bool = False,
    max_samples: Optional[int] = None,
    ratios: Optional[str] = None,
    seed: int = 0,
) -> tuple[list[Conversation], LoadReport]:
    """Read every record of `path` (see `sources.read_sources`) and check each as an SFT conversation."""
    return read_sources(path, lambda record, where: to_conversation(record, where, dataset_format),
                        skip_invalid=skip_invalid, max_samples=max_samples, ratios=ratios, seed=seed)
