"""Conversation → (input_ids, labels): one rendering with the official chat template, labels from its spans.

Why not render growing prefixes and diff them? Some official templates render a turn differently depending
on what follows it (Mistral v0.3 moves the system prompt into the last user turn; Qwen3 and DeepSeek-R1 drop
the reasoning of earlier turns). So we render the whole conversation ONCE, exactly as the model will see it,
find each assistant message's text in that rendering, extend it over the end-of-turn terminator, and map
those character spans to tokens with the fast tokenizer's offsets. Everything else gets label -100.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy

from llm_dojo.data.chat_format import ChatFormat
from llm_dojo.data.records import Conversation
from llm_dojo.data.sources import DataError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def render_for_training(messages: list[dict], tokenizer, chat_format: ChatFormat, tools: Optional[list] = None) -> str:
    """The exact training text: the official rendering (plus the terminator for templates that omit it)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_format.chat_template,
                                         tools=tools)
    if chat_format.append_terminator_at_end:
        text += chat_format.terminator
    return text


def _answer_candidates(content: str) -> list[str]:
    """The forms an assistant message can take in a rendering: as written, trimmed, or without its reasoning."""
    candidates = [content, content.strip()]
    if "</think>" in content:  # reasoning templates drop <think>…</think> from earlier turns
        candidates.append(content.split("</think>")[-1].strip())
    return [c for i, c in enumerate(candidates) if c and c not in candidates[:i]]


def assistant_char_spans(text: str, messages: list[dict], chat_format: ChatFormat, tokenizer=None,
                         tools: Optional[list] = None) -> list[tuple[int, int]]:
    """Character spans [start, end) of every assistant answer plus its terminator, in rendering order."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    terminator = chat_format.terminator or ""
    for index, message in enumerate(messages):
        if message.get("tool_calls"):
            span = _locate_tool_call_turn(text, messages, index, chat_format, tokenizer, tools, cursor)
            spans.append(span)
            cursor = span[1]
            continue
        if message["role"] != "assistant":
            # Walk past user/system/tool text so an answer equal to an earlier question is not matched there.
            # Templates may move or drop these (Mistral's system prompt), so a miss does not move the cursor.
            position = text.find(message["content"].strip(), cursor)
            if position >= 0:
                cursor = position + len(message["content"].strip())
            continue
        span = _locate_answer(text, message["content"], cursor, terminator)
        if span is None:
            raise DataError(
                f"cannot find assistant text {message['content'][:40]!r} followed by terminator {terminator!r} in the "
                f"rendered conversation (template '{chat_format.name}'): the template rewrites assistant content"
            )
        prefix = chat_format.answer_prefix
        if prefix and span[0] - len(prefix) >= cursor and text.startswith(prefix, span[0] - len(prefix)):
            span = (span[0] - len(prefix), span[1])  # the model writes it after the generation prompt: train it
        spans.append(span)
        cursor = span[1]
    return spans


def _locate_tool_call_turn(text: str, messages: list[dict], index: int, chat_format: ChatFormat, tokenizer,
                           tools: Optional[list], cursor: int) -> tuple[int, int]:
    """A turn that calls tools is rendered in a template-specific syntax, so it cannot be found by its text.

    Its start is where the conversation so far, rendered with the generation prompt, ends — valid only when
    that rendering is a prefix of the full one, which we check — and it ends at the next terminator.
    """
    prefix = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True,
                                           chat_template=chat_format.chat_template, tools=tools)
    terminator = chat_format.terminator or ""
    end = text.find(terminator, len(prefix)) if terminator else -1
    if not text.startswith(prefix) or len(prefix) < cursor or end < 0:
        raise DataError(
            f"template '{chat_format.name}' does not render the tool-call turn {index} after the conversation before "
            f"it, so its span cannot be located exactly; tool calls are not supported with this template"
        )
    return len(prefix), end + len(terminator)


def _locate_answer(text: str, content: str, cursor: int, terminator: str) -> Optional[tuple[int, int]]:
    for candidate in _answer_candidates(content):
        start = text.find(candidate, cursor)
        while start >= 0:
            end = start + len(candidate)
            gap_end = len(text) - len(text[end:].lstrip())  # skip whitespace between answer and terminator
            if terminator and text.startswith(terminator, gap_end):
                return _with_reasoning(text, start, cursor, content, candidate), gap_end + len(terminator)
            if not terminator and gap_end == len(text):
                return start, end
            start = text.find(candidate, start + 1)
    return None


def _with_reasoning(text: str, start: int, cursor: int, content: str, candidate: str) -> int:
    """When only the answer part matched but the template rendered the <think> block too, train the block."""
    if candidate == content or candidate == content.strip() or "</think>" not in content:
        return start
    before = text[cursor:start].rstrip()
    if before.endswith("</think>") and "<think>" in before:
        return cursor + before.rindex("<think>")
    return start


@dataclass
class EncodedSample:
    """Token ids and labels (-100 where not trained) of one conversation."""

    input_ids: list[int]
    labels: list[int]
    source: str
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_conversation(
    messages: list[dict],
    tokenizer,
    chat_format: ChatFormat,
    max_len: int,
    mask_history: bool = False,
    source: str = "",
    tools: Optional[list] = None,
) -> EncodedSample:
    """Render once, tokenize with offsets, and label exactly the assistant answers plus their terminators."""
    text = render_for_training(messages, tokenizer, chat_format, tools)
    spans = assistant_char_spans(text, messages, chat_format, tokenizer, tools)
    if mask_history:
        spans = spans[-1:]
    # add_special_tokens=False: templates write BOS themselves where the model needs it (as apply_chat_template does).
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for token_index, (token_start, token_end) in enumerate(encoding["offset_mapping"]):
        while span_index < len(spans) and spans[span_index][1] <= token_start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if token_end > span_start and token_start < span_end:  # the token overlaps a trained span
            labels[token_index] = input_ids[token_index]
    truncated = len(input_ids) > max_len
    return EncodedSample(input_ids[:max_len], labels[:max_len], source, truncated)


@dataclass
class EncodeStats:
    """Counts shown after encoding a dataset."""

    samples: int = 0
    truncated: int = 0
    dropped_no_label: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def percentile(self, q: float) -> int:
        if len(self.lengths) == 0:
            return 0
        ordered = numpy.sort(numpy.asarray(self.lengths))  # a list here, a column of the on-disk store there
        return int(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))])

    def summary(self) -> str:
        trained = self.trained_tokens / max(1, self.tokens)
        return (
            f"{self.samples} samples, {self.tokens} tokens (p50 {self.percentile(50)}, p90 {self.percentile(90)}, "
            f"max {self.percentile(100)}), {trained:.1%} trained; {self.truncated} truncated, "
            f"{self.dropped_no_label} dropped (no trained token left after truncation)"
        )


def encode_checked(conversation: Conversation, tokenizer, chat_format: ChatFormat, max_len: int,
                   mask_history: bool = False) -> EncodedSample:
    """encode_conversation, with any failure turned into a DataError that names the record's file:line."""
    try:
        return encode_conversation(conversation.messages, tokenizer, chat_format, max_len, mask_history,
                                   conversation.source, conversation.tools)
    except DataError as err:
        raise DataError(f"{conversation.source}: {err}") from None
    except Exception as err:  # a template raising (e.g. "System role not supported") is a data problem
        raise DataError(f"{conversation.source}: the chat template refused this conversation: {err}") from None


def encode_dataset(
    conversations: list[Conversation],
    tokenizer,
    chat_format: ChatFormat,
    max_len: int,
    mask_history: bool = False,
) -> tuple[list[EncodedSample], EncodeStats]:
    """Encode every conversation; drop (and count) samples left with no trained token."""
    samples: list[EncodedSample] = []
    stats = EncodeStats()
    for conversation in conversations:
        sample = encode_checked(conversation, tokenizer, chat_format, max_len, mask_history)
        stats.truncated += sample.truncated
        if sample.num_trained == 0:
            stats.dropped_no_label += 1
            continue
        samples.append(sample)
        stats.samples += 1
        stats.tokens += len(sample.input_ids)
        stats.trained_tokens += sample.num_trained
        stats.lengths.append(len(sample.input_ids))
    if stats.dropped_no_label:
        logger.warning("dropped %d sample(s) with no trained token left after truncation to max_len", stats.dropped_no_label)
    if not samples:
        raise DataError(f"no sample has a trained token within max_len={max_len}: raise max_len")
    return samples, stats
