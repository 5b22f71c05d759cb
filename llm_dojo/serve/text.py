"""From token ids to the text `dojo serve` sends: incremental decoding, stop strings, and what each token stands for.

  Detokenizer  token ids in, text deltas out, one token at a time (a short window, so a long prompt costs little)
  RowText      one generated row: its text, cut before the first stop string; it releases only text that can no
               longer turn out to be the start of a stop string, each token's log-prob going out with its text
  token_text   the text and UTF-8 bytes one token stands for (OpenAI's `token` and `bytes`)
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from llm_dojo.serve.logprobs import TokenLogprob


class Detokenizer:
    """Turns token ids into text deltas; the text only grows, and half of a UTF-8 character waits for the rest.

    Each step decodes a window that starts at the previous step's tokens (vLLM's incremental detokenizing): the
    earlier tokens give the new ones their context (a SentencePiece word's leading space), and the cost per token
    stays constant however long the text is."""

    def __init__(self, tokenizer, *, skip_special_tokens: bool):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.window_start = 0  # the window's first token (already turned into text, kept as context)
        self.read = 0  # tokens before this index are in the text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (empty while a character is unfinished)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.window_start:self.read])
        after = self._decode(self.ids[self.window_start:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.window_start, self.read = self.read, len(self.ids)
        return after[len(before):]


def first_stop(text: str, stop: Sequence[str], search_from: int = 0) -> Optional[int]:
    """Where the earliest stop string starts in `text` (looking from `search_from`), or None."""
    found = [i for i in (text.find(s, max(0, search_from - len(s) + 1)) for s in stop) if i >= 0]
    return min(found) if found else None


def partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (those must wait)."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class RowText:
    """The text of one generated row, as tokens arrive: decoded, cut at the first stop string, released when safe.

    Released text never contains a stop string nor anything after one, so a streamed answer equals the whole one.
    Each token's log-prob (when asked for) goes out with the text that completes it; when a stop string cuts the
    text, the tokens that started before the cut are kept, the rest (the stop string's own tokens) are dropped."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.detokenizer = Detokenizer(tokenizer, skip_special_tokens=True)
        self.stop = tuple(stop)
        self.text = ""  # everything decoded so far
        self.cut: Optional[int] = None  # where the first stop string starts, once one appeared
        self.sent = 0  # characters released
        self.pending: list[tuple[int, TokenLogprob]] = []  # (end of the token's text, its log-prob), not yet released

    def add(self, token_id: int, logprob: Optional[TokenLogprob] = None) -> bool:
        """Append one generated token; True when a stop string has now appeared (the row should end)."""
        start = len(self.text)
        self.text += self.detokenizer.add(token_id)
        if logprob is not None:
            logprob.offset = start
            self.pending.append((len(self.text), logprob))
        if self.stop and self.cut is None:
            self.cut = first_stop(self.text, self.stop, start)
        return self.cut is not None

    def release(self, final: bool = False) -> tuple[str, list[TokenLogprob]]:
        """The text (and token log-probs) that is safe to send now; `final` when the row has ended."""
        if self.cut is not None:
            end, final = self.cut, True
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - partial_stop_length(self.text, self.stop)
        text = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        ready = [lp for token_end, lp in self.pending if token_end <= self.sent or (final and lp.offset < end)]
        self.pending = [] if final else self.pending[len(ready):]
        return text, ready


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2 byte-level BPE writes each byte as one printable character; this maps those characters back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_text(tokenizer, token_id: int) -> tuple[str, list[int]]:
    """The text one token stands for and its UTF-8 bytes, exact even for a token that is half of a character."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if "\ufffd" not in text:
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text  # SentencePiece drops a word's leading space when the token is decoded alone
        return text, list(text.encode("utf-8"))
    byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece or "")  # SentencePiece's byte-fallback tokens
    if byte:
        raw = [int(byte.group(1), 16)]
    elif piece and all(char in _byte_of_char() for char in piece):
        raw = [_byte_of_char()[char] for char in piece]
    else:
        raw = list(text.encode("utf-8"))
    return bytes(raw).decode("utf-8", errors="replace"), raw
