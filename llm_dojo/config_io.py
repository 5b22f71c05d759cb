"""Reading a config: the YAML file and `key=value` overrides, as plain dicts, and the config error.

Kept apart from config.py, which imports transformers (seconds), so pre-flight checks can read a config and
fail on a wrong path before any heavy import.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the key and a hint of the fix in the message."""


def read_yaml(path: str) -> dict:
    """Read a YAML config file into a dict, with clear errors for a missing file or bad YAML."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
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
            overrides[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            overrides[key] = raw
    return overrides
