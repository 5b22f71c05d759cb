"""Checkpoints you can trust after a crash: sealed when complete, checked before they are loaded.

The Trainer writes `output_dir/checkpoint-N/` file by file (weights, optimizer, scheduler, RNG state, trainer
state). A process killed in the middle leaves a folder that looks like a checkpoint and is not one. So once the
Trainer has finished a checkpoint, `SealCheckpoints` writes `dojo_checkpoint.json` into it (atomically: a temporary
file, then a rename) listing every file and its size — the seal. A checkpoint counts only when its seal is there,
every listed file still has its size, and each weight and state file is whole (safetensors header against the file
size, CRCs of torch's zip files).

`resume_from_checkpoint: auto` takes the newest such checkpoint in output_dir and skips damaged ones with a
warning; a PATH must be whole, or the run stops with the reason. The Trainer restores model, optimizer,
scheduler, RNG and the position in the data (the sampler is seeded, so the same batches follow); packing works
per batch, so the packed rows are the same too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from llm_dojo.config_io import ConfigError

logger = logging.getLogger(__name__)

SEAL = "dojo_checkpoint.json"
CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")


class SealCheckpoints(TrainerCallback):
    """After each checkpoint the Trainer saves, seal it (on the first process, which writes the files)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seal_checkpoint(folder)
        return control


def seal_checkpoint(folder: Path) -> None:
    """Write the seal of a finished checkpoint, after checking that its weights are not empty."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
             and p.name != SEAL}
    for name in files:
        if name.endswith(".safetensors") and safetensors_is_empty(folder / name):
            # DeepSpeed ZeRO-3 writes empty tensors unless the weights are gathered on save.
            raise RuntimeError(f"{folder / name} holds no weights: with DeepSpeed ZeRO-3 set "
                               f"stage3_gather_16bit_weights_on_model_save: true (train_args/launch/ds_zero3.json)")
    temporary = folder / f".{SEAL}.tmp"
    temporary.write_text(json.dumps({"files": files}, indent=1))
    os.replace(temporary, folder / SEAL)


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why `folder` is not a whole checkpoint, or None when it is."""
    seal = folder / SEAL
    if not seal.is_file():
        return f"no {SEAL} (the save did not finish, or it was not written by LLM-Dojo)"
    try:
        files = json.loads(seal.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{SEAL} is unreadable ({err})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, {size:,} when it was saved"
        problem = file_problem(path)
        if problem:
            return f"{name}: {problem}"
    return None


def file_problem(path: Path) -> Optional[str]:
    """A damaged weight or state file: a safetensors file cut short, or a torch zip file with a bad CRC."""
    if path.suffix == ".safetensors":
        header_size, tensors = safetensors_header(path)
        end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
        if 8 + header_size + end != path.stat().st_size:
            return "safetensors data does not end where its header says"
    elif path.suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as err:
            return f"unreadable ({err})"
        if bad is not None:
            return f"CRC mismatch in {bad}"
    elif path.suffix in (".pt", ".pth", ".bin"):
        return "not a complete torch file"
    return None


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(header size, {tensor name: dtype, shape, data_offsets}) of a safetensors file, read without its data."""
    with open(path, "rb") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_size))
    return header_size, {key: entry for key, entry in header.items() if key != "__metadata__"}


def safetensors_is_empty(path: Path) -> bool:
    shapes = [entry["shape"] for entry in safetensors_header(path)[1].values()]
    return not shapes or any(0 in shape for shape in shapes)


def checkpoint_to_resume(resume: Optional[str], output_dir: str) -> Optional[str]:
    """The folder to resume from: None (start afresh), the newest whole checkpoint for 'auto', or a checked PATH."""
    if resume in (None, "", "false", "False"):
        return None
    if resume != "auto":
        folder = Path(resume).expanduser()
        problem = checkpoint_problem(folder) if folder.is_dir() else "not a folder"
        if problem:
            raise ConfigError(f"resume_from_checkpoint '{resume}' cannot be loaded: {problem}")
        return str(folder)
    candidates = sorted(((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                         if p.is_dir() and (m := CHECKPOINT_FOLDER.match(p.name))), reverse=True)
    for step, folder in candidates:
        problem = checkpoint_problem(folder)
        if problem is None:
            logger.info("resuming from %s (step %d)", folder, step)
            return str(folder)
        logger.warning("skipping %s: %s", folder, problem)
    logger.info("resume_from_checkpoint: auto found no whole checkpoint in %s: training from the start", output_dir)
    return None
