"""Reading a config: the YAML file and `key=value` overrides, as plain dicts, and the config error.

Kept apart from config.py, which imports transformers (seconds), so pre-flight checks can read a config and
fail on a wrong path before any heavy import.
"""

from __future__ import annotations

from pathlib import Path

import re

import yaml


class ConfigLoader(yaml.SafeLoader):
    """YAML where only true/false are booleans (YAML 1.2), so `save_strategy: no` stays the string "no".

    PyYAML follows YAML 1.1, which also reads yes/no/on/off as booleans: `save_strategy=no` then arrived as False
    and was rejected ("False is not a valid SaveStrategy"). Boolean settings still accept yes/no, because the
    values reach transformers' argument parser as text.
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def load_yaml_text(text: str):
    """Parse YAML text with ConfigLoader (1.2 booleans)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration problem, with the key and a hint of the fix in the message."""


def read_yaml(path: str) -> dict:
    """Read a YAML config file into a dict, with clear errors for a missing file or bad YAML."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml_text(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of key: value")
    return data


def parse_overrides(items: list[str]) -> dict:
    """Parse `key=value` command-line overrides; values are YAML scalars (so 1e-4, true, [a, b] work)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: expected key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            overrides[key] = load_yaml_text(raw) if raw != "" else ""
        except yaml.YAMLError:
            overrides[key] = raw
    return overrides
