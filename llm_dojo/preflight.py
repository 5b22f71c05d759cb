"""Pre-flight checks: everything about a run that can be wrong is found in seconds, before any model loads.

- the model: the embedded alias (a near miss gets "did you mean"), a local folder (a path that does not exist is
  an error, never a hub query), or a hub id that is cached or whose hub can be reached (offline fails at once,
  not after a minute of retries);
- data files named in the config (read relative to the config file's folder) must exist;
- `output_dir`: not a file, in a writable place, and not holding a trained output unless `overwrite_output_dir`.

`check_train_command` runs them on the raw config before `dojo train` imports transformers (seconds of imports),
so these mistakes cost well under 5 s. The full config is validated afterwards by config.py.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from llm_dojo.config_io import ConfigError, parse_overrides, read_yaml
from llm_dojo.data.sources import DATA_SUFFIXES, data_entries
from llm_dojo.models.embedded import EMBEDDED_ALIAS

HUB_TIMEOUT_S = 3

# Files that show a folder holds the result of a training run or a merge.
TRAINED_OUTPUT_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors",
                        "model.safetensors.index.json", "dojo_config.yaml")


def looks_like_local_path(name: str) -> bool:
    """A name the user meant as a folder: starts with . / ~, or has a backslash or more than one slash."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_model(name: str, what: str = "model_name_or_path") -> None:
    """Fail fast on a model that cannot load: a missing folder, a mistyped alias, an unreachable hub."""
    if name.strip().lower() == EMBEDDED_ALIAS:
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{what} '{name}' is a file; give the model's folder (with config.json)")
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{what} '{name}' has no config.json: is it a model folder?")
        return
    if looks_like_local_path(name):
        raise ConfigError(f"{what} '{name}': folder not found (a path is never looked up on the hub)")
    if EMBEDDED_ALIAS.startswith(name.lower()) or difflib.get_close_matches(name.lower(), [EMBEDDED_ALIAS], n=1,
                                                                              cutoff=0.6):
        raise ConfigError(f"{what} '{name}' is not a folder or a known model. Did you mean: {EMBEDDED_ALIAS}?")
    check_hub_reachable(name, what)


def check_hub_reachable(repo_id: str, what: str) -> None:
    """A hub id must be in the local cache, or the hub must answer; with no network, say so at once."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return
    hint = f"use a local folder or the embedded model '{EMBEDDED_ALIAS}'"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{what} '{repo_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {hint}")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:  # a name lookup and a TCP connect, a few seconds at most, instead of a minute of download retries
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        raise ConfigError(f"{what} '{repo_id}' is not a local folder nor in the Hugging Face cache, and {host} cannot "
                          f"be reached (offline?): {hint}") from None


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """`output_dir` must be a folder we may write, and must not hold a trained output unless overwrite is set."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir '{output_dir}' is a file; choose a folder")
    if path.is_dir():
        found = [name for name in TRAINED_OUTPUT_FILES if (path / name).exists()]
        if found and not overwrite:
            raise ConfigError(f"output_dir '{output_dir}' already holds a trained output ({found[0]}); choose a new "
                              f"output_dir, or set overwrite_output_dir=true to replace it")
    existing = nearest_existing_parent(path)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir '{output_dir}' cannot be created: '{existing}' is not a writable folder")


def nearest_existing_parent(path: Path) -> Optional[Path]:
    """The path itself or its closest ancestor that exists."""
    for candidate in [path, *path.absolute().parents]:
        if candidate.exists():
            return candidate
    return None


def check_data_path(value: str, key: str, config_folder: Optional[Path]) -> None:
    """Every comma-separated entry that names a data file (by its suffix) must exist, beside the config or here."""
    for entry in data_entries(value) if value.strip() else []:
        if not entry.lower().endswith(DATA_SUFFIXES):
            continue  # a folder, or a hub dataset name: checked when read
        candidate = Path(entry).expanduser()
        places = [candidate] if candidate.is_absolute() else [Path(config_folder or ".") / candidate, candidate]
        if not any(place.is_file() for place in places):
            where = f" (looked in {config_folder} and the working directory)" if config_folder else ""
            raise ConfigError(f"{key}: data file '{entry}' not found{where}")


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def check_train_command(argv: list[str]) -> None:
    """The cheap checks of `dojo train CONFIG [key=value ...]`, on the raw values, before heavy imports."""
    if not argv or argv[0] in ("-h", "--help"):
        return
    config_path = argv[0] if "=" not in argv[0] else None
    from_file = read_yaml(config_path) if config_path else {}
    from_cli = parse_overrides(argv[1:] if config_path else argv)
    values = {**from_file, **from_cli}
    check_model(str(values.get("model_name_or_path") or EMBEDDED_ALIAS))
    folder = Path(config_path).resolve().parent if config_path else None
    for key in ("train_data_path", "eval_data_path", "eval_prompts_path", "eval_after_training"):
        if isinstance(values.get(key), str):
            check_data_path(values[key], key, folder if key in from_file and key not in from_cli else None)
    check_output_dir(str(values.get("output_dir") or "outputs/run"), _truthy(values.get("overwrite_output_dir")))
