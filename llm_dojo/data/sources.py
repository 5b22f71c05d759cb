"""Where records come from: files, folders, hub datasets and their mixing ratios — for every stage.

The first step of the data's path: `sources` (raw JSON values with their file:line) → `records` (checked SFT
conversations; later preference pairs or RL prompts) → `encode` → `batching` → loss. This module knows nothing
about what a record means: a stage passes a `convert(record, where)` function that checks one record and returns
its own record type, or raises DataError naming the file, the line and the field.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

logger = logging.getLogger(__name__)

# A single record larger than this is almost certainly a broken file (e.g. a whole JSON array on one line).
MAX_RECORD_BYTES = 4 * 1024 * 1024
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
UTF8_BOM = b"\xef\xbb\xbf"  # written at the start of text files by some Windows tools
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")

Record = TypeVar("Record")


class DataError(ValueError):
    """A malformed record or data file. The message names the file, the line and the field."""


@dataclass
class LoadReport:
    """What a source read, kept and skipped (shown in logs and by `dojo inspect`)."""

    records: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def skip(self, error: DataError, where: str) -> None:
        """Count one skipped record under its reason (the message without its location and hint)."""
        self.skipped += 1
        message = str(error)
        reason = message[len(where) + 2:] if message.startswith(f"{where}: ") else message
        kind = reason.split(" (")[0][:80]
        self.skipped_reasons[kind] = self.skipped_reasons.get(kind, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(message)


def data_entries(path: str) -> list[str]:
    """Split a data path into its comma-separated entries (each a file, a folder or a hub dataset name)."""
    entries = [part.strip() for part in path.split(",") if part.strip()]
    if not entries:
        raise DataError(f"no data files in '{path}'")
    return entries


def is_data_file(path: Path) -> bool:
    """Whether a file name ends in a data suffix (.jsonl/.json/.parquet, any case: `B.JSONL` counts)."""
    return path.suffix.lower() in DATA_SUFFIXES


def names_list(names: list[str], limit: int = 5) -> str:
    """'a, b, c' — or the first `limit` names and how many more."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def entry_files(entry: str) -> list[Path]:
    """The data files of one local entry: a file, or every data file under a folder (hidden ones excluded)."""
    candidate = Path(entry).expanduser()
    if candidate.is_dir():
        return folder_files(candidate)
    if candidate.is_file():
        if not is_data_file(candidate):
            raise DataError(f"{candidate}: unsupported file type '{candidate.suffix}' (use .jsonl, .json or .parquet)")
        return [candidate]
    raise DataError(f"{candidate}: data file not found")


def folder_files(folder: Path) -> list[Path]:
    """Every data file under `folder`, sorted. Hidden files and folders (.ipynb_checkpoints, .git) are not data;
    other files are skipped with one warning that names them."""
    found, skipped = [], []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]  # not even walked: .git can be huge
        for name in files:
            if not name.startswith("."):
                path = Path(root, name)
                (found if is_data_file(path) else skipped).append(path)
    found.sort()
    skipped.sort()
    if skipped:
        logger.warning("%s: skipped %d file(s) that are not %s: %s", folder, len(skipped), "/".join(DATA_SUFFIXES),
                       names_list([str(p.relative_to(folder)) for p in skipped], limit=10))
    if not found:
        contents = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        holds = f"it holds {names_list(contents)}" if contents else "it is empty"
        raise DataError(f"{folder}: folder has no {'/'.join(DATA_SUFFIXES)} file ({holds}; hidden files and "
                        f"folders are not read)")
    return found


def is_hub_entry(entry: str) -> bool:
    """'org/name' or 'org/name:split' with nothing local by that name (a name ending in a data suffix never is)."""
    local = Path(entry).expanduser()
    return not local.exists() and bool(HUB_NAME.match(entry)) and not is_data_file(local)


def iter_entry_records(entry: str) -> Iterator[tuple[str, Any]]:
    """Records of one entry: local files, or a `datasets` hub dataset ('org/name' or 'org/name:split') when online.

    A name ending in a data suffix (`data/train.jsonl`) is always a local file, never a hub dataset.
    """
    if is_hub_entry(entry):
        name, _, split = entry.partition(":")
        try:
            import datasets

            rows = datasets.load_dataset(name, split=split or "train")
        except Exception as err:  # noqa: BLE001 - any hub/network failure becomes one clear data error
            raise DataError(f"{entry}: not a local path, and loading it as a hub dataset failed: {err}") from None
        for index, row in enumerate(rows, start=1):
            yield f"{entry}[row {index}]", row
        return
    for file in entry_files(entry):
        count = 0
        for item in iter_raw_records(file):
            count += 1
            yield item
        logger.info("read %d record(s) from %s", count, file)


def iter_raw_records(file: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed JSON value or DataError) for each record of one file."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(file).to_pylist(), start=1):
            yield f"{file}:row {index}", row
        return
    if suffix == ".json":
        try:
            value = json.loads(read_text(file))
        except json.JSONDecodeError as err:
            raise DataError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(value, list):
            raise DataError(f"{file}: a .json data file must hold a list of records, got {type(value).__name__}")
        for index, record in enumerate(value, start=1):
            yield f"{file}:record {index}", record
        return
    with open(file, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{file}:{line_number}"
            record = parse_jsonl_line(raw, where, first=line_number == 1)
            if record is not BLANK_LINE:
                yield where, record


BLANK_LINE = object()  # what parse_jsonl_line returns for a line with nothing on it


def parse_jsonl_line(raw: bytes, where: str, first: bool = False) -> Any:
    """One jsonl line → its JSON value, a DataError saying what is wrong with it, or BLANK_LINE.

    Kept apart from the reading so the on-disk store (store.py) can hand raw lines to worker processes and
    parse them there, with exactly these messages.
    """
    if first and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    if len(raw) > MAX_RECORD_BYTES:
        return DataError(f"{where}: line is {len(raw):,} bytes, over the {MAX_RECORD_BYTES:,}-byte limit")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DataError(f"{where}: invalid UTF-8 at byte {err.start} (re-save the file as UTF-8)")
    if not line.strip():
        return BLANK_LINE  # blank lines are common at the end of jsonl files
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})")


def read_text(file: Path) -> str:
    """A whole UTF-8 file as text, without a leading byte-order mark."""
    raw = file.read_bytes()
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: invalid UTF-8 at byte {err.start} (re-save the file as UTF-8)") from None


def parse_ratios(ratios: Optional[str], count: int) -> list[float]:
    """`train_data_ratios` ('1,0.5'): one non-negative factor per data entry; None means all 1."""
    if ratios in (None, ""):
        return [1.0] * count
    try:
        values = [float(v) for v in str(ratios).split(",")]
    except ValueError:
        raise DataError(f"train_data_ratios '{ratios}': expected comma-separated numbers, e.g. 1,0.5") from None
    if len(values) != count or any(v < 0 for v in values):
        raise DataError(
            f"train_data_ratios '{ratios}': need {count} non-negative number(s), one per train_data_path entry"
        )
    return values


def apply_ratio(records: list, ratio: float, seed: int) -> list:
    """Down-sample (ratio < 1) or repeat (ratio > 1) one source, deterministically, to mix datasets."""
    if ratio == 1.0 or not records:
        return records
    target = round(len(records) * ratio)
    whole, rest = divmod(target, len(records))
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    return records * whole + shuffled[:rest]


def read_sources(
    path: str,
    convert: Callable[[Any, str], Record],
    *,
    skip_invalid: bool = False,
    max_samples: Optional[int] = None,
    ratios: Optional[str] = None,
    seed: int = 0,
) -> tuple[list[Record], LoadReport]:
    """Read every record of every entry of `path`, check it with `convert`, mix by `ratios`; return them with a report.

    With skip_invalid false (the default) the first bad record raises DataError; with it true, bad records are
    skipped and counted. A data path with no usable record is always an error.
    """
    entries = data_entries(path)
    factors = parse_ratios(ratios, len(entries))
    records: list[Record] = []
    report = LoadReport()
    for entry, factor in zip(entries, factors):
        from_entry: list[Record] = []
        for where, raw in iter_entry_records(entry):
            report.records += 1
            try:
                if isinstance(raw, DataError):
                    raise raw
                from_entry.append(convert(raw, where))
            except DataError as err:
                if not skip_invalid:
                    raise
                report.skip(err, where)
        records += apply_ratio(from_entry, factor, seed)
    if max_samples is not None:
        records = records[:max_samples]
    if report.skipped:
        logger.warning("skipped %d invalid record(s) of %d: %s", report.skipped, report.records, report.skipped_reasons)
    if not records:
        raise DataError(f"{path}: no usable record (read {report.records}, skipped {report.skipped})")
    return records, report
