"""Render a conversation with an official chat template, exactly as `tokenizer.apply_chat_template` would.

We do not re-implement Jinja: `transformers.utils.chat_template_utils.render_jinja_template` is the function
`apply_chat_template(tokenize=False)` itself calls, with the tokenizer's special tokens as extra variables.
The only step we repeat is the message normalisation it does first (messages become plain dicts and keys whose
value is None are dropped), so that the two paths see the same input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from transformers.utils.chat_template_utils import render_jinja_template

from llm_dojo.templates.registry import get_template


def _normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy messages to plain dicts without None-valued keys, as transformers does before rendering."""
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {index} should be a dict with 'role' and 'content', got {type(message).__name__}")
        normalized.append({key: value for key, value in message.items() if value is not None})
    return normalized


def render_template_string(
    chat_template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    special_tokens: Mapping[str, Optional[str]],
    add_generation_prompt: bool = False,
    tools: Optional[list[dict]] = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with a Jinja chat template; `special_tokens` plays the tokenizer's special_tokens_map."""
    template_kwargs = {key: value for key, value in special_tokens.items() if value is not None}
    template_kwargs.update(kwargs)  # like apply_chat_template: explicit kwargs win over special tokens
    rendered, _ = render_jinja_template(
        conversations=[_normalize(messages)],
        tools=tools,
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        **template_kwargs,
    )
    return rendered[0]


def render(
    name: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    tools: Optional[list[dict]] = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with the registered official template `name` (e.g. 'llama3.1')."""
    spec = get_template(name)
    return render_template_string(
        spec.chat_template,
        messages,
        special_tokens=spec.special_tokens_map(),
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        **kwargs,
    )
