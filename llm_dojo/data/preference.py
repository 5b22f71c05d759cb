"""Preference records: a prompt with a chosen and a rejected answer (dpo, simpo, orpo), or one answer with a
thumbs up or down (kto), checked and encoded with the same chat format and masks as SFT.

The data's path: `sources.read_sources` → `to_preference_pair` / `to_kto_example` (here) → `encode_pair` /
`encode_kto` (here, through `encode.encode_conversation`) → `pair_batching` → the loss in recipes/preference.py.

Accepted records (one per line of a jsonl file, or one per row of json/parquet):
- paired:   {"prompt": str | messages, "chosen": answer, "rejected": answer}
            {"messages": [... ending with a user turn], "chosen": answer, "rejected": answer}
            {"instruction", "input"?, "system"?, "chosen", "rejected"}               (alpaca style)
            {"chosen": [full conversation], "rejected": [full conversation]}        (the prompt is their common start)
- unpaired: the same prompt fields with {"completion": answer, "label": true | false}     (kto)
An answer is a string, one assistant message {"role": "assistant", "content": ...}, or a list holding one.

Each side is rendered once, as the whole conversation prompt + answer, with the model's official template (so
nothing is added that the template does not render), and only the final answer plus its terminator is trained.
The prompt tokens of chosen and rejected must be identical; a template that renders them differently is an error.
A pair whose chosen or rejected side is longer than max_len is dropped and counted: cutting an answer would change
what is preferred, cutting the prompt would change what it answers.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from llm_dojo.data.chat_format import ChatFormat, resolve_chat_format
from llm_dojo.data.encode import IGNORE_INDEX, encode_conversation
from llm_dojo.data.records import _text, check_messages, check_turn_order, prompt_messages
from llm_dojo.data.sources import DataError, LoadReport, read_sources

logger = logging.getLogger(__name__)

PROMPT_FIELDS = ("prompt", "messages", "instruction")


@dataclass
class PreferencePair:
    """A prompt (messages ending with a user turn) and two assistant answers to it."""

    prompt: list[dict]
    chosen: dict
    rejected: dict
    source: str  # "file.jsonl:12"
    tools: Optional[list] = None


@dataclass
class KTOExample:
    """A prompt and one assistant answer marked desirable (True) or undesirable (False)."""

    prompt: list[dict]
    completion: dict
    desirable: bool
    source: str
    tools: Optional[list] = None


def answer_message(value: Any, where: str, name: str) -> dict:
    """A string, an assistant message, or a list holding exactly one → {"role": "assistant", "content": ...}."""
    if isinstance(value, str):
        return {"role": "assistant", "content": _text(value, where, name)}
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{name}' must be a string or an assistant message, got {type(value).__name__}")
    messages = check_messages(value, where, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "nothing"
        raise DataError(f"{where}: field '{name}' must hold one assistant message (got {roles}); put earlier turns "
                        f"in 'prompt' or 'messages'")
    return messages[0]


def split_implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[list[dict], dict, dict]:
    """Two full conversations (Anthropic-HH style) → their common start as the prompt, and the two last answers."""
    chosen_turns = check_messages(chosen, where, "chosen")
    rejected_turns = check_messages(rejected, where, "rejected")
    for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        check_turn_order(turns, where)
        if turns[-1]["role"] != "assistant":
            raise DataError(f"{where}: field '{name}' must end with the assistant's answer")
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' are full conversations that differ before their last "
                        f"turn; give the shared part as 'prompt' and one answer each")
    return chosen_turns[:-1], chosen_turns[-1], rejected_turns[-1]


def record_prompt(record: dict, where: str) -> list[dict]:
    """The prompt of a preference record: 'prompt' (string or messages), 'messages', or alpaca 'instruction'."""
    if "instruction" in record and record.get("system") is not None:
        messages = [{"role": "system", "content": _text(record["system"], where, "system")}]
        return messages + prompt_messages({k: v for k, v in record.items() if k != "system"}, where)
    return prompt_messages(record, where)


def checked_tools(record: dict, where: str) -> Optional[list]:
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise DataError(f"{where}: field 'tools' must be a list of function definitions (objects)")
    return tools or None


def to_preference_pair(record: Any, where: str) -> PreferencePair:
    """Check one parsed record and convert it to a PreferencePair, or raise DataError naming file:line and field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: each record must be a JSON object, got {type(record).__name__}")
    for name in ("chosen", "rejected"):
        if name not in record:
            hint = (" (this looks like a KTO record: use stage: kto)" if "completion" in record and "label" in record
                    else "")
            raise DataError(f"{where}: field '{name}' is missing; preference records need 'chosen' and "
                            f"'rejected'{hint}")
    if any(name in record for name in PROMPT_FIELDS):
        prompt = record_prompt(record, where)
        chosen = answer_message(record["chosen"], where, "chosen")
        rejected = answer_message(record["rejected"], where, "rejected")
    elif isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
        prompt, chosen, rejected = split_implicit_prompt(record["chosen"], record["rejected"], where)
    else:
        raise DataError(f"{where}: no prompt: give 'prompt', 'messages' or 'instruction' next to 'chosen' and "
                        f"'rejected' (fields present: {sorted(record)})")
    if chosen == rejected:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' are the same answer; nothing to prefer")
    return PreferencePair(prompt, chosen, rejected, where, checked_tools(record, where))


def to_kto_example(record: Any, where: str) -> KTOExample:
    """Check one unpaired record {prompt fields, "completion", "label": bool} → KTOExample."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: each record must be a JSON object, got {type(record).__name__}")
    for name in ("completion", "label"):
        if name not in record:
            hint = " (this looks like a paired record: use stage: dpo)" if "chosen" in record else ""
            raise DataError(f"{where}: field '{name}' is missing; KTO records need 'completion' and 'label'{hint}")
    if not isinstance(record["label"], bool):
        raise DataError(f"{where}: field 'label' must be true or false, got {record['label']!r}")
    prompt = record_prompt(record, where)
    completion = answer_message(record["completion"], where, "completion")
    return KTOExample(prompt, completion, record["label"], where, checked_tools(record, where))


@dataclass
class PreferenceStats:
    """Counts shown after encoding a preference set."""

    examples: int = 0
    too_long: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self, unit: str = "pairs") -> str:
        trained = self.trained_tokens / max(1, self.tokens)
        longest = max(self.lengths, default=0)
        return (f"{self.examples} {unit}, {self.tokens} tokens (longest side {longest}), {trained:.1%} trained; "
                f"{self.too_long} dropped (a side longer than max_len)")


def encode_side(prompt: list[dict], answer: dict, tokenizer, chat_format: ChatFormat, source: str,
                tools: Optional[list]) -> tuple[list[int], list[int]]:
    """Token ids and labels of prompt + answer, rendered once; only the answer (and its terminator) is trained."""
    try:
        sample = encode_conversation(prompt + [answer], tokenizer, chat_format, max_len=10**9, mask_history=True,
                                     source=source, tools=tools)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    except Exception as err:  # a template raising (e.g. "System role not supported") is a data problem
        raise DataError(f"{source}: the chat template refused this conversation: {err}") from None
    return sample.input_ids, sample.labels


def first_trained(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def encode_pair(pair: PreferencePair, tokenizer, chat_format: ChatFormat, max_len: int) -> Optional[dict]:
    """{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}, or None when too long."""
    chosen_ids, chosen_labels = encode_side(pair.prompt, pair.chosen, tokenizer, chat_format, pair.source, pair.tools)
    rejected_ids, rejected_labels = encode_side(pair.prompt, pair.rejected, tokenizer, chat_format, pair.source,
                                                pair.tools)
    for name, labels in (("chosen", chosen_labels), ("rejected", rejected_labels)):
        if first_trained(labels) == len(labels):
            raise DataError(f"{pair.source}: field '{name}': no token of the answer was found in the rendered text")
    prompt_length = first_trained(chosen_labels)
    if chosen_ids[:prompt_length] != rejected_ids[:first_trained(rejected_labels)]:
        raise DataError(f"{pair.source}: the chat template renders the prompt differently before 'chosen' and before "
                        f"'rejected' (their prompt tokens differ), so the two answers would not be compared on the "
                        f"same prompt")
    if max(len(chosen_ids), len(rejected_ids)) > max_len:
        return None
    return {"chosen_input_ids": chosen_ids, "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_ids, "rejected_labels": rejected_labels}


def encode_kto(example: KTOExample, tokenizer, chat_format: ChatFormat, max_len: int) -> Optional[dict]:
    """{"input_ids", "labels", "desirable", "prompt_length"}, or None when longer than max_len."""
    ids, labels = encode_side(example.prompt, example.completion, tokenizer, chat_format, example.source,
                              example.tools)
    if first_trained(labels) == len(labels):
        raise DataError(f"{example.source}: field 'completion': no token of the answer was found in the rendered text")
    if len(ids) > max_len:
        return None
    return {"input_ids": ids, "labels": labels, "desirable": example.desirable, "prompt_length": first_trained(labels)}


def encode_preference_set(examples: list, tokenizer, chat_format: ChatFormat, max_len: int
                          ) -> tuple[list[dict], PreferenceStats]:
    """Encode every pair (or KTO example); drop and count those longer than max_len."""
    encoded, stats = [], PreferenceStats()
    paired = bool(examples) and isinstance(examples[0], PreferencePair)
    for example in examples:
        item = (encode_pair if paired else encode_kto)(example, tokenizer, chat_format, max_len)
        if item is None:
            stats.too_long += 1
            continue
        sides = ([item["chosen_labels"], item["rejected_labels"]] if paired else [item["labels"]])
        for labels in sides:
            stats.tokens += len(labels)
            stats.trained_tokens += sum(1 for label in labels if label != IGNORE_INDEX)
            stats.lengths.append(len(labels))
        stats.examples += 1
        encoded.append(item)
    if stats.too_long:
        logger.warning("dropped %d example(s) with a side longer than max_len=%d", stats.too_long, max_len)
    if not encoded:
        raise DataError(f"no preference example fits within max_len={max_len}: raise max_len")
    return encoded, stats


def load_preference_records(path: str, stage: str, skip_invalid: bool = False, max_samples: Optional[int] = None,
                            ratios: Optional[str] = None, seed: int = 0) -> tuple[list, LoadReport]:
    """Read every record of `path` and check each as a pair (dpo, simpo, orpo) or a KTO example (kto)."""
    check = to_kto_example if stage == "kto" else to_preference_pair
    return read_sources(path, check, skip_invalid=skip_invalid, max_samples=max_samples, ratios=ratios, seed=seed)


def attach_kl_samples(items: list[dict], seed: int, max_len: int) -> None:
    """Give every KTO example its mismatched KL sample: its own prompt followed by another example's answer.

    Partners follow one seeded shuffle of the set, each example taking the next one's answer, so no example is
    its own partner (when there are two or more) and the samples are fixed, which lets the reference score them
    once (precompute_ref_log_probs). Token ids are spliced at the prompt/answer boundary, where `encode_pair`'s
    check shows templates render nothing that depends on the answer; a KL sample longer than max_len is cut.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    for position, index in enumerate(order):
        item, other = items[index], items[order[(position + 1) % len(order)]]
        prompt = item["input_ids"][:item["prompt_length"]]
        item["kl_input_ids"] = (prompt + other["input_ids"][other["prompt_length"]:])[:max_len]
        item["kl_labels"] = ([IGNORE_INDEX] * len(prompt) + other["labels"][other["prompt_length"]:])[:max_len]


@dataclass
class PreparedPreference:
    """Encoded preference examples (and optional held-out ones), with what was read and how it was rendered."""

    chat_format: ChatFormat
    report: LoadReport
    train: list[dict]
    stats: PreferenceStats
    eval: Optional[list[dict]] = None
    eval_stats: Optional[PreferenceStats] = None


def prepare_preference_data(data, stage: str, tokenizer, seed: int = 0) -> PreparedPreference:
    """Read, check and encode the preference data of a DataArguments section (in memory: preference sets are
    usually thousands to a few hundred thousand pairs; SFT's on-disk cache is not used here yet)."""
    chat_format = resolve_chat_format(tokenizer, data.template_name)
    logger.info("chat template: %s; trained terminator: %r", chat_format.name, chat_format.terminator)
    unit = "examples" if stage == "kto" else "pairs"
    records, report = load_preference_records(data.train_data_path, stage, data.skip_invalid, data.max_samples,
                                              data.train_data_ratios, seed)
    train, stats = encode_preference_set(records, tokenizer, chat_format, data.max_len)
    logger.info("train data: %d records read, %d skipped; %s", report.records, report.skipped, stats.summary(unit))
    held_out = eval_stats = None
    if data.val_set_size and data.eval_data_path:
        raise DataError("set either val_set_size (split the training data) or eval_data_path, not both")
    if data.eval_data_path:
        eval_records, _ = load_preference_records(data.eval_data_path, stage, data.skip_invalid)
        held_out, eval_stats = encode_preference_set(eval_records, tokenizer, chat_format, data.max_len)
    elif data.val_set_size:
        count = int(data.val_set_size) if data.val_set_size >= 1 else round(len(train) * data.val_set_size)
        if not 0 < count < len(train):
            raise DataError(f"val_set_size={data.val_set_size} leaves {len(train) - count} of {len(train)} {unit} "
                            f"for training; choose a share below 1 or a smaller count")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held_out = [train[i] for i in sorted(order[:count])]
        train = [train[i] for i in sorted(order[count:])]
    if held_out is not None:
        logger.info("eval data: %d %s", len(held_out), unit)
    if stage == "kto":
        for part in (train, held_out or []):
            attach_kl_samples(part, seed, data.max_len)
    return PreparedPreference(chat_format, report, train, stats, held_out, eval_stats)
