"""What chat, generate and serve share: turning records into prompts, stop tokens, sampling settings, streaming.

The prompt is always rendered by the tokenizer's own chat template (the one saved with the model or adapter, i.e.
the one used in training) with `add_generation_prompt=True`, then tokenized with `add_special_tokens=False`:
templates that print the BOS token themselves would otherwise get it twice.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from llm_dojo.data.chat_format import ChatFormat, chat_format_for_inference, resolve_chat_format
from llm_dojo.data.records import prompt_messages
from llm_dojo.models.loading import trained_in_4bit

logger = logging.getLogger(__name__)

Message = dict[str, str]


# --------------------------------------------------------------------------------------------------- stop tokens


def _as_id_list(value: Any) -> list[int]:
    """An eos setting may be None, an int or a list of ints; always return a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def stop_token_ids(tokenizer, model=None, chat_format: Optional[ChatFormat] = None) -> list[int]:
    """Token ids that end an assistant turn: the chat format's stop tokens plus the model's own generation eos.

    The chat format is the one saved with the adapter/model (see data/chat_format.py); without one it is resolved
    from the tokenizer's template exactly as training resolves it, so training and inference share one rule.
    """
    chat_format = chat_format or resolve_chat_format(tokenizer, "auto")
    ids = chat_format.stop_token_ids(tokenizer)
    generation_config = getattr(model, "generation_config", None) if model is not None else None
    if generation_config is not None:
        ids += _as_id_list(generation_config.eos_token_id)
    return sorted(set(ids))


def pad_token_id(tokenizer) -> int:
    """The id used to pad batches (load_tokenizer guarantees a pad token)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return _as_id_list(tokenizer.eos_token_id)[0]


# --------------------------------------------------------------------------------------------------- prompts


def record_to_messages(record: Any, where: str = "input") -> list[Message]:
    """One input record ({"prompt"}, {"instruction", "input"} or {"messages"}) → chat messages ending with a user turn."""
    return prompt_messages(record, where)


def with_system(messages: list[Message], system: Optional[str]) -> list[Message]:
    """Prepend a system message unless the conversation already has one (None keeps the template's default)."""
    if system is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages


def render_prompt(tokenizer, messages: list[Message]) -> str:
    """The chat template's text for `messages`, ending with the assistant header the model continues from."""
    if not tokenizer.chat_template:
        raise ValueError("this tokenizer has no chat template; use a chat/instruct model or an adapter folder "
                         "written by `dojo train` (it carries the template used in training)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_chat(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of the rendered prompt (no extra special tokens: the template already has them)."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a raw text prompt, with the tokenizer's usual special tokens (e.g. BOS)."""
    return tokenizer(text)["input_ids"]


# --------------------------------------------------------------------------------------------------- generation


def generation_config(
    stop_ids: Sequence[int],
    pad_id: int,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
):
    """A fresh GenerationConfig: greedy when temperature is 0, else sampling with temperature and top-p."""
    from transformers import GenerationConfig

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": list(stop_ids), "pad_token_id": pad_id}
    if temperature == 0:
        settings["do_sample"] = False
    else:
        # top_k=0 disables the library's default top-k=50, so only temperature and top-p shape the distribution.
        settings.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    return GenerationConfig(**settings)


def cut_at_stop(token_ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Generated ids up to (not including) the first stop token, and whether a stop token was found."""
    stops = set(stop_ids)
    for i, token in enumerate(token_ids):
        if token in stops:
            return list(token_ids[:i]), True
    return list(token_ids), False


def left_padded_batch(tokenizer, prompts: Sequence[Sequence[int]], device) -> dict[str, torch.Tensor]:
    """Left-pad prompts into input_ids + attention_mask, so every row's last real token sits at the end."""
    pad_id = pad_token_id(tokenizer)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    # generate() derives position_ids from the attention mask, so padded rows count positions from their first real token.
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.emitted = ""

    def add(self, token_id: int) -> str:
        """Append one token and return the newly readable text (possibly empty)."""
        self.token_ids.append(token_id)
        # Decoding the whole answer each time is simple and exact (tokenizers merge spaces and bytes across tokens);
        # for answers of a few hundred tokens it costs far less than a forward pass.
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the next token
            return ""
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else text
        self.emitted = text
        return delta


class RowStreamer:
    """A transformers streamer for a batch: routes each row's new token to its own callback until the row stops.

    `on_token(row, token_id)` is called for every generated token of a live row (stop token included);
    the row is then finished and later padding is ignored. The first `put` (the prompt) is skipped.
    """

    def __init__(self, batch_size: int, stop_ids: Sequence[int], on_token: Callable[[int, int], None]):
        self.stop_ids = set(stop_ids)
        self.on_token = on_token
        self.finished = [False] * batch_size
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            if token in self.stop_ids:
                self.finished[row] = True
            self.on_token(row, token)

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------- CLI pieces


def add_model_arguments(parser: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    """--model / --adapter / --dtype / --load-in-4bit, shared by chat, generate and serve."""
    parser.add_argument("--model", required=model_required,
                        help="base model: hub id, local folder or 'smollm2-135m-instruct' (default: the adapter's base)")
    parser.add_argument("--adapter", help="LoRA/DoRA/QLoRA adapter folder written by `dojo train`")
    parser.add_argument("--dtype", default="auto", help="fp32 | bf16 | fp16 | auto (bf16 on a capable GPU, else fp32)")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="load the base in 4-bit NF4 (default: as the adapter was trained, i.e. on for QLoRA "
                             "adapters; --no-load-in-4bit forces full precision)")
    parser.add_argument("--trust-remote-code", action="store_true")


def add_sampling_arguments(parser: argparse.ArgumentParser, *, temperature: Optional[float], max_new_tokens: int) -> None:
    """--temperature / --top-p / --max-new-tokens."""
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (ignored when greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)


@dataclass
class LoadedModel:
    """What chat, generate and serve need: the model (None when only the tokenizer was asked for), its tokenizer,
    the chat format it was trained with, and the token ids that end a turn."""

    model: Any
    tokenizer: Any
    chat_format: ChatFormat
    stop_ids: list[int]
    base: str  # the base model: a local folder or a hub id
    load_in_4bit: bool


def decide_4bit(requested: Optional[bool], adapter: Optional[str]) -> bool:
    """Load the base the way the adapter was trained (4-bit for QLoRA) unless the user said otherwise; log which."""
    evidence = trained_in_4bit(adapter)
    if requested is None:
        if evidence:
            logger.info("loading the base in 4-bit NF4, as the adapter was trained (%s); --no-load-in-4bit to "
                        "override", evidence)
        return bool(evidence)
    if evidence and not requested:
        logger.warning("the adapter was trained on a 4-bit base (%s) but --no-load-in-4bit loads it in full "
                       "precision: answers can differ from what training saw", evidence)
    elif requested and adapter and not evidence:
        logger.info("loading the base in 4-bit NF4 (--load-in-4bit)")
    return bool(requested)


def load_from_args(args: argparse.Namespace, *, weights: bool = True) -> LoadedModel:
    """Model, tokenizer, chat format and stop ids for the arguments of add_model_arguments (weights=False: no model)."""
    from llm_dojo.models.embedded import resolve_model_path
    from llm_dojo.models.loading import (load_tokenizer, load_with_adapter, parse_dtype, read_adapter_base,
                                         tokenizer_source)

    from llm_dojo.preflight import check_model

    if args.model is None and args.adapter is None:
        raise SystemExit("give --model, --adapter, or both")
    if args.adapter and not (Path(args.adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--adapter {args.adapter}: no adapter_config.json there; give the output_dir of "
                                f"`dojo train` (for a merged or full model use --model)")
    base = args.model or read_adapter_base(args.adapter)
    check_model(base, "--model" if args.model else "the adapter's base model")
    load_in_4bit = decide_4bit(args.load_in_4bit, args.adapter)
    tokenizer = load_tokenizer(tokenizer_source(base, args.adapter), trust_remote_code=args.trust_remote_code)
    chat_format = chat_format_for_inference(tokenizer, args.adapter, resolve_model_path(base))
    model = None
    if weights:
        model = load_with_adapter(base, args.adapter, dtype=parse_dtype(args.dtype), load_in_4bit=load_in_4bit,
                                  trust_remote_code=args.trust_remote_code)
    stop_ids = stop_token_ids(tokenizer, model, chat_format)
    logger.info("chat format '%s': a turn ends at %s", chat_format.name, tokenizer.convert_ids_to_tokens(stop_ids))
    return LoadedModel(model, tokenizer, chat_format, stop_ids, resolve_model_path(base), load_in_4bit)
