"""Official chat templates kept as data, and rendering that matches `tokenizer.apply_chat_template`."""

from llm_dojo.templates.registry import TemplateSpec, get_template, template_names
from llm_dojo.templates.render import render

__all__ = ["TemplateSpec", "get_template", "render", "template_names"]
