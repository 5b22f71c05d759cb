"""The registry of official chat templates: one JSON file per model family in `registry/`, loaded as data.

Each file keeps the Jinja string exactly as the model's tokenizer config publishes it, plus the facts a
trainer needs around it (special tokens, the default system prompt, the text that ends an assistant turn).
Adding a family means adding one JSON file and its name to `TEMPLATE_NAMES`; no code changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

REGISTRY_DIR = Path(__file__).with_name("registry")

# The order used by `dojo template list` and the generated docs: families grouped, oldest first.
TEMPLATE_NAMES = (
    "qwen1.5", "qwen2", "qwen2.5", "qwen3",
    "yi", "yi-1.5",
    "gemma", "gemma2", "gemma3",
    "phi3", "phi3.5", "phi4",
    "deepseek", "deepseek-v2", "deepseek-v3", "deepseek-r1", "deepseek-coder",
    "llama2", "llama3", "llama3.1",
    "mistral-v0.2", "mistral-v0.3",
    "glm4", "internlm2", "smollm2",
)

_REQUIRED = ("name", "model_id", "source", "chat_template", "bos_token", "eos_token", "pad_token",
             "default_system", "terminator", "supports_system", "special_tokens", "notes")


@dataclass(frozen=True)
class TemplateSpec:
    """One official chat template and the facts needed to train with it."""

    name: str
    model_id: str
    source: str
    chat_template: str
    bos_token: Optional[str]
    eos_token: Optional[str]
    pad_token: Optional[str]
    default_system: Optional[str]
    terminator: str
    supports_system: bool
    special_tokens: tuple[str, ...]
    notes: tuple[str, ...]
    confidence: str = "unknown"

    def special_tokens_map(self) -> dict[str, str]:
        """The special tokens a tokenizer passes to its template (`bos_token`, `eos_token`, `pad_token`)."""
        tokens = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}
        return {key: value for key, value in tokens.items() if value is not None}


def template_names() -> list[str]:
    """Names of all registered templates, in registry order."""
    return list(TEMPLATE_NAMES)


def _load(path: Path) -> TemplateSpec:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["name"] != path.stem:
        raise ValueError(f"{path}: field 'name' is {data['name']!r}, expected {path.stem!r} (the file name)")
    return TemplateSpec(
        name=data["name"],
        model_id=data["model_id"],
        source=data["source"],
        chat_template=data["chat_template"],
        bos_token=data["bos_token"],
        eos_token=data["eos_token"],
        pad_token=data["pad_token"],
        default_system=data["default_system"],
        terminator=data["terminator"],
        supports_system=bool(data["supports_system"]),
        special_tokens=tuple(data["special_tokens"]),
        notes=tuple(data["notes"]),
        confidence=data.get("confidence", "unknown"),
    )


@lru_cache(maxsize=None)
def get_template(name: str) -> TemplateSpec:
    """Return the registered template called `name` (e.g. 'qwen2.5'); unknown names raise ValueError."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown chat template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}")
    return _load(REGISTRY_DIR / f"{name}.json")
