"""The chat format: which template renders the text, which token ends an assistant turn, and when to stop.

It is resolved ONCE (from the tokenizer's own template, or a registry entry named by `template_name`), used by
training to build labels, saved next to every adapter or model we write (`dojo_chat_format.json`), and read back
by chat, generate, serve (both backends) and merge. One rule for "end of turn", everywhere:

- `terminator`: the text that closes an assistant turn in the rendering; it is trained with the answer.
- `stop_tokens`: the tokens that end generation: the terminator (when it is one token) and the tokenizer's eos.
  For GLM-4 the terminator is the NEXT turn's header `<|user|>`, which is not its eos: without this list a
  generation would run past the answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from llm_dojo.data.sources import DataError

logger = logging.getLogger(__name__)

CHAT_FORMAT_FILE = "dojo_chat_format.json"
PROBE_TEXT = "Dojo-probe-7f3a9"  # a string no template contains, used to look at what follows an assistant turn


class ChatFormatError(DataError):
    """The tokenizer and template cannot give a usable chat format (no template, no end-of-turn token)."""


@dataclass(frozen=True)
class ChatFormat:
    """The chat template used for training, the text that ends an assistant turn, and the tokens that stop generation."""

    name: str  # "auto" (the tokenizer's own, not in the registry) or a registry name
    chat_template: str
    terminator: Optional[str]
    # Some templates (GLM-4) never write a terminator after the last assistant turn: the model stops by emitting
    # the next turn's header. We then append the terminator to the training text so the model learns to stop.
    append_terminator_at_end: bool = False
    stop_tokens: tuple[str, ...] = ()
    # Whitespace the rendering puts between the generation prompt and the answer (GLM-4: the "\n" after
    # <|assistant|>). At inference the model must write it itself, so it is trained with the answer.
    answer_prefix: str = ""

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids of `stop_tokens` in this tokenizer (tokens it does not know as one token are skipped, with a warning)."""
        ids = []
        for token in self.stop_tokens:
            token_id = single_token_id(tokenizer, token)
            if token_id is None:
                logger.warning("stop token %r is not a single token of this tokenizer; generation cannot stop on it",
                               token)
                continue
            ids.append(token_id)
        if not ids:
            raise ChatFormatError(f"chat format '{self.name}' has no stop token this tokenizer knows "
                                  f"(stop tokens {list(self.stop_tokens)}); set eos_token in tokenizer_config.json")
        return sorted(set(ids))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write `dojo_chat_format.json` into `folder` (inside a staging folder: the caller renames it into place)."""
        path = Path(folder) / CHAT_FORMAT_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> "ChatFormat":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        try:
            return cls(name=data["name"], chat_template=data["chat_template"], terminator=data["terminator"],
                       append_terminator_at_end=bool(data.get("append_terminator_at_end", False)),
                       stop_tokens=tuple(data.get("stop_tokens") or ()),
                       answer_prefix=data.get("answer_prefix", ""))
        except KeyError as err:
            raise ChatFormatError(f"{path}: field {err} is missing") from None


def single_token_id(tokenizer, token: str) -> Optional[int]:
    """The id of `token` when the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def _registry_lookup(name: str):
    from llm_dojo.templates.registry import get_template

    return get_template(name)


def _registry_match(chat_template: str):
    """The registry entry whose official template string is exactly this one, if any."""
    from llm_dojo.templates.registry import get_template, template_names

    for name in template_names():
        spec = get_template(name)
        if spec.chat_template == chat_template:
            return spec
    return None


def _render_probe(tokenizer, chat_template: str) -> str:
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": PROBE_TEXT}]
    return tokenizer.apply_chat_template(probe, tokenize=False, chat_template=chat_template)


def detect_terminator(tokenizer, chat_template: str) -> Optional[str]:
    """Find the end-of-turn text by rendering a probe answer and reading the first special token after it."""
    text = _render_probe(tokenizer, chat_template)
    tail = text[text.index(PROBE_TEXT) + len(PROBE_TEXT):]
    specials = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
    specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found = [(tail.find(tok), tok) for tok in specials if tok in tail]
    if found:
        position, token = min(found)
        if tail[:position].strip() == "":
            return token
    return None


def _appends_terminator(tokenizer, chat_template: str, terminator: Optional[str]) -> bool:
    """True when the template leaves the last assistant turn without its terminator."""
    if not terminator:
        return False
    text = _render_probe(tokenizer, chat_template)
    return terminator not in text[text.index(PROBE_TEXT):]


def _answer_prefix(tokenizer, chat_template: str) -> str:
    """The whitespace between the end of the generation prompt and an answer, which the model must generate."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True, chat_template=chat_template)
    full = _render_probe(tokenizer, chat_template)
    if not full.startswith(prompt) or PROBE_TEXT not in full[len(prompt):]:
        return ""  # templates that ignore add_generation_prompt (Yi-1.5): nothing to learn here
    gap = full[len(prompt):full.index(PROBE_TEXT, len(prompt))]
    return gap if gap.strip() == "" else ""


def _stop_tokens(tokenizer, terminator: Optional[str]) -> tuple[str, ...]:
    """The terminator (when it is one token) and the tokenizer's eos, in that order, without repeats."""
    tokens = []
    if terminator and single_token_id(tokenizer, terminator) is not None:
        tokens.append(terminator)
    if tokenizer.eos_token and tokenizer.eos_token not in tokens:
        tokens.append(tokenizer.eos_token)
    return tuple(tokens)


def own_template(tokenizer) -> Optional[str]:
    """The tokenizer's chat template string (the 'default' one when it carries several)."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    return own or None


def resolve_chat_format(tokenizer, template_name: str = "auto") -> ChatFormat:
    """Pick the chat template (the tokenizer's own, or a registry entry) and its terminator and stop tokens."""
    own = own_template(tokenizer)
    if template_name == "auto":
        if not own:
            raise ChatFormatError(
                "the tokenizer has no chat template (a base model?): set template_name to a registry name "
                "(see `dojo template list`)"
            )
        spec = _registry_match(own)
        if spec is not None:
            logger.info("tokenizer's chat template is the official '%s' template", spec.name)
            name, terminator = spec.name, spec.terminator
        else:
            name, terminator = "auto", detect_terminator(tokenizer, own) or tokenizer.eos_token
        return ChatFormat(name, own, terminator, _appends_terminator(tokenizer, own, terminator),
                          _stop_tokens(tokenizer, terminator), _answer_prefix(tokenizer, own))
    spec = _registry_lookup(template_name)
    if single_token_id(tokenizer, spec.terminator) is None:
        logger.warning(
            "terminator %r of template '%s' is not one token in this tokenizer: the model can learn to stop, but "
            "generation must stop on its eos. Is this the right template for this model?",
            spec.terminator, template_name,
        )
    if own and own != spec.chat_template:
        logger.warning(
            "template_name '%s' differs from the tokenizer's own chat template: training text will not match what "
            "this tokenizer renders at inference unless the registry template is saved with the model (we do)",
            template_name,
        )
    return ChatFormat(spec.name, spec.chat_template, spec.terminator,
                      _appends_terminator(tokenizer, spec.chat_template, spec.terminator),
                      _stop_tokens(tokenizer, spec.terminator), _answer_prefix(tokenizer, spec.chat_template))


def chat_format_for_inference(tokenizer, *folders: Optional[str]) -> ChatFormat:
    """The chat format saved with an adapter or model by `dojo train` / `dojo merge`, else resolved from the tokenizer.

    `folders` are searched in order (adapter first, then the model); hub ids and missing folders are skipped.
    """
    for folder in folders:
        if folder and (Path(folder) / CHAT_FORMAT_FILE).is_file():
            chat_format = ChatFormat.from_file(Path(folder) / CHAT_FORMAT_FILE)
            logger.info("chat format '%s' from %s: stops at %s", chat_format.name, folder, list(chat_format.stop_tokens))
            return chat_format
    return resolve_chat_format(tokenizer, "auto")
