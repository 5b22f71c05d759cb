"""`dojo chat`: talk to a model (optionally with an adapter) in the terminal, token by token.

    dojo chat --model smollm2-135m-instruct [--adapter outputs/run] [--system "You are terse."]
    dojo chat --adapter outputs/run --prompt "Who are you?"      # one answer on stdout, then exit

In the conversation: `/reset` starts over, `/system TEXT` sets the system prompt (`/system` alone restores the
template's default), `/exit` (or Ctrl-D, or Ctrl-C at the prompt) leaves. Ctrl-C while the model is answering
stops that answer and drops the turn.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

import torch

from llm_dojo.infer.common import (
    IncrementalDecoder,
    Message,
    RowStreamer,
    add_model_arguments,
    add_sampling_arguments,
    encode_chat,
    generation_config,
    load_from_args,
    pad_token_id,
    stop_token_ids,
    with_system,
)

logger = logging.getLogger(__name__)

HELP = "commands: /reset  /system TEXT  /system (default)  /exit"
DEFAULT_CHAT_TEMPERATURE = 0.7


class ChatSession:
    """A conversation with one model: the message history, the system prompt and the sampling settings."""

    def __init__(self, model, tokenizer, *, system: Optional[str] = None, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 512, stop_ids: Optional[list[int]] = None):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.history: list[Message] = []
        # The ids saved with the adapter's chat format (load_from_args); else resolved from the tokenizer's template.
        self.stop_ids = stop_ids or stop_token_ids(tokenizer, model)
        self.config = generation_config(self.stop_ids, pad_token_id(tokenizer), max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p)

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = []

    def reply(self, user_text: str, on_text: Callable[[str], None] = lambda text: None) -> str:
        """Answer `user_text` given the history, calling `on_text` with each new piece of text as it is generated."""
        messages = with_system(self.history + [{"role": "user", "content": user_text}], self.system)
        prompt_ids = encode_chat(self.tokenizer, messages)
        decoder = IncrementalDecoder(self.tokenizer)

        def on_token(row: int, token_id: int) -> None:
            if token_id not in self.stop_ids:
                delta = decoder.add(token_id)
                if delta:
                    on_text(delta)

        input_ids = torch.tensor([prompt_ids], device=self.model.device)
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=self.config, streamer=RowStreamer(1, self.stop_ids, on_token))
        answer = decoder.emitted
        # Only a finished exchange enters the history; an interrupted one (KeyboardInterrupt above) leaves no trace.
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dojo chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--system", help="system prompt (default: the chat template's own default, if any)")
    parser.add_argument("--prompt", help="answer this one message, print only the answer on stdout, and exit")
    add_sampling_arguments(parser, temperature=None, max_new_tokens=512)
    return parser


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def interactive(session: ChatSession) -> int:
    """The read-answer loop; returns the exit code."""
    print(f"Chatting with the model. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if text == "/system" or text.startswith("/system "):
            session.system = text[len("/system"):].strip() or None
            print(f"[system prompt: {session.system or 'template default'}]", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}] {HELP}", file=sys.stderr)
            continue
        try:
            session.reply(text, on_text=write)
        except KeyboardInterrupt:
            write("\n")
            print("[answer interrupted; the turn was dropped]", file=sys.stderr)
            continue
        write("\n")


def main(argv: list[str]) -> int:
    """Entry point of `dojo chat`."""
    args = build_parser().parse_args(argv)
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if args.prompt is not None else DEFAULT_CHAT_TEMPERATURE
    loaded = load_from_args(args)
    session = ChatSession(loaded.model, loaded.tokenizer, system=args.system, temperature=temperature,
                          top_p=args.top_p, max_new_tokens=args.max_new_tokens, stop_ids=loaded.stop_ids)
    if args.prompt is not None:
        write(session.reply(args.prompt) + "\n")
        return 0
    return interactive(session)
