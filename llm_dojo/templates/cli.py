"""`dojo template list | show NAME | render --name NAME --messages FILE.json [--add-generation-prompt] [--tools FILE.json]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from llm_dojo.templates.registry import get_template, template_names
from llm_dojo.templates.render import render


class InputError(Exception):
    """Bad user input: printed as one line on stderr, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dojo template", description="List, show or render the official chat templates.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="one line per registered template: name and model id")
    show = sub.add_parser("show", help="print a template's facts and its Jinja source")
    show.add_argument("name")
    rend = sub.add_parser("render", help="print a conversation rendered with a template, nothing added")
    rend.add_argument("--name", required=True, help="template name, see `dojo template list`")
    rend.add_argument("--messages", required=True, type=Path, help="JSON file: a list of {role, content} objects")
    rend.add_argument("--add-generation-prompt", action="store_true", help="end with the assistant header")
    rend.add_argument("--tools", type=Path, help="JSON file: a list of tool (function) definitions")
    return parser


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {path}") from None
    except OSError as err:
        raise InputError(f"cannot read {what} file {path}: {err.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def _check_messages(messages: Any, path: Path) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{path}: expected a non-empty JSON list of {{\"role\", \"content\"}} objects")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"{path}: message {index} is not an object with 'role' and 'content'")
        if not isinstance(message.get("role"), str):
            raise InputError(f"{path}: message {index} has no string field 'role'")
        if "content" not in message:
            raise InputError(f"{path}: message {index} has no field 'content'")
    return messages


def _show(name: str) -> str:
    spec = get_template(name)
    lines = [
        f"name:            {spec.name}",
        f"model id:        {spec.model_id}",
        f"source:          {spec.source}",
        f"bos/eos/pad:     {spec.bos_token!r} / {spec.eos_token!r} / {spec.pad_token!r}",
        f"default system:  {spec.default_system!r}",
        f"terminator:      {spec.terminator!r}",
        f"supports system: {spec.supports_system}",
    ]
    lines += [f"note:            {note}" for note in spec.notes]
    lines += ["", "chat_template:", spec.chat_template]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Run `dojo template ...`; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.action == "list":
            for name in template_names():
                sys.stdout.write(f"{name:<16}{get_template(name).model_id}\n")
        elif args.action == "show":
            sys.stdout.write(_show(args.name))
        else:
            spec = get_template(args.name)  # fail on a bad name before reading files
            messages = _check_messages(_read_json(args.messages, "messages"), args.messages)
            tools = None
            if args.tools is not None:
                tools = _read_json(args.tools, "tools")
                if not isinstance(tools, list):
                    raise InputError(f"{args.tools}: expected a JSON list of tool definitions")
            try:
                text = render(spec.name, messages, add_generation_prompt=args.add_generation_prompt, tools=tools)
            except (TemplateError, TypeError) as err:
                raise InputError(f"template {spec.name!r} rejected these messages: {err}") from None
            sys.stdout.write(text)
    except (InputError, ValueError) as err:
        print(f"dojo template: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
