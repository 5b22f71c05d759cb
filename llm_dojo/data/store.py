"""Encoded data on disk: every record encoded once, by several processes, into a memory-mapped Arrow file.

    dojo prepare CONFIG.yaml [key=value ...]      (encode ahead of time, e.g. on a cluster's CPU nodes)

Why: a million conversations held as Python lists cost ~85 bytes per token and minutes of encoding on every run
and in every process. Here the encoded samples live in one Arrow file, cached under a fingerprint of everything
that decides them: the data files (path, size, modification time), the tokenizer, the chat format, max_len, the
masking options and this code. Training maps the file; only the rows a batch needs are read from it.

The path of one record: a jsonl line, read by the main process → a worker process parses it, checks it as a
conversation (records.py) and encodes it with the official template (encode.py) → the main process appends it to
the Arrow file, in file order. Mixing ratios, max_samples, the drop of samples with no trained token and the
held-out split are applied afterwards, as a selection of row numbers: one cache serves every mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy
import pyarrow

from llm_dojo.data.chat_format import ChatFormat, resolve_chat_format
from llm_dojo.data.encode import EncodeStats, encode_checked
from llm_dojo.data.records import to_conversation
from llm_dojo.data.sources import (BLANK_LINE, DataError, LoadReport, apply_ratio, data_entries, entry_files,
                                   is_hub_entry, iter_entry_records, iter_raw_records, parse_jsonl_line, parse_ratios)

logger = logging.getLogger(__name__)

CACHE_ENV = "DOJO_CACHE_DIR"
# Records per task sent to a worker: big enough that the hand-over costs little, small enough for a steady bar.
CHUNK_RECORDS = 256
# Below this much data the worker processes cost more to start than they save: encode in this process.
POOL_MIN_BYTES = 2 * 1024 * 1024
SCHEMA = pyarrow.schema([
    ("input_ids", pyarrow.list_(pyarrow.int32())),
    ("labels", pyarrow.list_(pyarrow.int32())),
    ("length", pyarrow.int32()),  # the name the Trainer's group_by_length sampler reads
    ("trained", pyarrow.int32()),
    ("truncated", pyarrow.bool_()),
    ("source", pyarrow.string()),  # file:line, for messages and `dojo inspect`
])
TRAINING_COLUMNS = ["input_ids", "labels", "length"]
# Our modules whose code decides the encoded tokens: a change to any of them makes a new cache.
CODE_FILES = ("sources.py", "records.py", "chat_format.py", "encode.py", "store.py")


@dataclass
class StoredData:
    """Training (and optional held-out) samples as memory-mapped `datasets.Dataset`s, with what was read."""

    chat_format: ChatFormat
    report: LoadReport
    train: Any  # datasets.Dataset with columns input_ids, labels, length
    stats: EncodeStats
    cache_dir: Path
    eval: Any = None
    eval_stats: Optional[EncodeStats] = None


def cache_root(configured: Optional[str] = None) -> Path:
    """`data_cache_dir`, else $DOJO_CACHE_DIR, else ~/.cache/llm_dojo/encoded."""
    return Path(configured or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm_dojo" / "encoded").expanduser()


def open_training_data(data, tokenizer, seed: int = 0, training_args=None) -> StoredData:
    """Encode (or reuse) the train and held-out data of a DataArguments section, then select what trains.

    With several processes (torchrun, accelerate launch) the first process of each machine encodes while the
    others wait; they then map the same cache.
    """
    chat_format = resolve_chat_format(tokenizer, data.template_name)
    logger.info("chat template: %s; trained terminator: %r; stop tokens: %s", chat_format.name,
                chat_format.terminator, list(chat_format.stop_tokens))
    factors = parse_ratios(data.train_data_ratios, len(data_entries(data.train_data_path)))
    # max_samples may stop the reading early (quick runs on big files) only when no ratio reorders the records.
    read_limit = data.max_samples if all(f == 1.0 for f in factors) else None
    if data.val_set_size and data.eval_data_path:
        raise DataError("set either val_set_size (split the training data) or eval_data_path, not both")
    waiting = training_args.main_process_first(local=True, desc="encoding the data") if training_args else None
    with waiting or contextlib.nullcontext():
        train_store = encoded_store(data.train_data_path, tokenizer, chat_format, data, read_limit)
        eval_store = encoded_store(data.eval_data_path, tokenizer, chat_format, data) if data.eval_data_path else None
    rows = select_rows(train_store.meta["entry_rows"], factors, seed, data.max_samples)
    train_rows, train_stats = keep_trained(train_store, rows, data.max_len)
    eval_rows = eval_stats = None
    if eval_store is not None:
        eval_rows, eval_stats = keep_trained(eval_store, numpy.arange(eval_store.meta["rows"]), data.max_len)
    elif data.val_set_size:
        train_rows, eval_rows = split_held_out(train_rows, data.val_set_size, seed)
        dropped = train_stats.dropped_no_label
        train_stats, eval_stats = stats_of(train_store, train_rows, dropped), stats_of(train_store, eval_rows, 0)
    logger.info("train data: %d records read, %d skipped; %s", train_store.report.records,
                train_store.report.skipped, train_stats.summary())
    if eval_stats is not None:
        logger.info("eval data: %s", eval_stats.summary())
    source = eval_store or train_store
    return StoredData(chat_format, train_store.report, train_store.dataset(train_rows), train_stats,
                      train_store.folder, source.dataset(eval_rows) if eval_rows is not None else None, eval_stats)


@dataclass
class EncodedStore:
    """One cache folder: `data.arrow` (one row per converted record, in file order) and `meta.json`."""

    folder: Path
    meta: dict
    columns: dict = field(default_factory=dict, repr=False)  # numpy copies of the small per-row columns, read once

    @property
    def report(self) -> LoadReport:
        return LoadReport(**self.meta["report"])

    def table(self) -> pyarrow.Table:
        return pyarrow.ipc.open_stream(pyarrow.memory_map(str(self.folder / "data.arrow"))).read_all()

    def column(self, name: str) -> numpy.ndarray:
        if name not in self.columns:
            self.columns[name] = self.table().column(name).to_numpy()
        return self.columns[name]

    def dataset(self, rows: numpy.ndarray):
        """The selected rows as a memory-mapped `datasets.Dataset` holding the columns training reads."""
        import datasets

        mapped = datasets.Dataset.from_file(str(self.folder / "data.arrow"))
        contiguous = len(rows) == mapped.num_rows and (len(rows) == 0 or bool((numpy.diff(rows) == 1).all()))
        if not contiguous:
            mapped = mapped.select(rows, keep_in_memory=True)
        return mapped.select_columns(TRAINING_COLUMNS)


def encoded_store(path: str, tokenizer, chat_format: ChatFormat, data, read_limit: Optional[int] = None) -> EncodedStore:
    """The cache of `path` for these encoding settings: reused when complete, else written (atomically)."""
    entries = data_entries(path)
    options = {"max_len": data.max_len, "mask_history": data.mask_history, "dataset_format": data.dataset_format,
               "skip_invalid": data.skip_invalid, "read_limit": read_limit}
    folder = cache_root(data.data_cache_dir) / fingerprint(entries, tokenizer, chat_format, options)
    store = read_store(folder)
    if store is not None:
        logger.info("encoded data: reusing %s (%d rows)", folder, store.meta["rows"])
        return store
    if folder.exists():  # damaged, or left by a crash before meta.json: make room for a complete one
        shutil.rmtree(folder, ignore_errors=True)
    return write_store(folder, entries, tokenizer, chat_format, options, data.dataset_num_proc)


def read_store(folder: Path) -> Optional[EncodedStore]:
    """A complete cache folder, or None (absent; or incomplete or damaged, which is said and then rebuilt)."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if (folder / "data.arrow").stat().st_size != meta["bytes"]:
            raise ValueError("data.arrow does not have the size meta.json records")
    except (OSError, ValueError, KeyError) as err:
        logger.warning("encoded data cache %s is damaged (%s): encoding again", folder, err)
        return None
    return EncodedStore(folder, meta)


def fingerprint(entries: list[str], tokenizer, chat_format: ChatFormat, options: dict) -> str:
    """A hash of everything that decides the encoded rows (not of the records themselves: stat is enough)."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())

    for entry in entries:
        if is_hub_entry(entry):
            add(["hub", entry])  # the hub's own cache decides what a name holds
            continue
        for file in entry_files(entry):
            status = file.stat()
            add([str(file.resolve()), status.st_size, status.st_mtime_ns])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    add([type(tokenizer).__name__, hashlib.sha256(backend.to_str().encode()).hexdigest() if backend else
         getattr(tokenizer, "name_or_path", "")])
    add(asdict(chat_format))
    add(options)
    code = Path(__file__).parent
    add([hashlib.sha256((code / name).read_bytes()).hexdigest() for name in CODE_FILES])
    return digest.hexdigest()[:24]


# What each encoding worker needs. Set before the worker processes are forked, so they inherit it instead of
# receiving the tokenizer with every task.
_JOB: dict = {}


def write_store(folder: Path, entries: list[str], tokenizer, chat_format: ChatFormat, options: dict,
                num_proc: Optional[int]) -> EncodedStore:
    """Encode every record of `entries` into `folder`; written in a temporary folder, then renamed into place."""
    from tqdm import tqdm

    started = time.time()
    _JOB.update(tokenizer=tokenizer, chat_format=chat_format, **options)
    total_bytes = sum(file.stat().st_size for entry in entries if not is_hub_entry(entry)
                      for file in entry_files(entry))
    workers = (num_proc or min(os.cpu_count() or 1, 8)) if total_bytes >= POOL_MIN_BYTES else 1
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    report, entry_rows, rows = LoadReport(), [0] * len(entries), 0
    limit = options["read_limit"]
    try:
        bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, desc=f"encoding ({workers} processes)",
                   disable=total_bytes < POOL_MIN_BYTES)
        with pyarrow.OSFile(str(staging / "data.arrow"), "wb") as sink, \
                pyarrow.ipc.new_stream(sink, SCHEMA) as writer:
            for entry_index, batch, records, skipped, size in encoded_chunks(record_chunks(entries), workers):
                report.records += records
                for message, where in skipped:
                    report.skip(DataError(message), where)
                if limit is not None and rows + batch.num_rows > limit:
                    batch = batch.slice(0, limit - rows)
                writer.write_batch(batch)
                rows += batch.num_rows
                entry_rows[entry_index] += batch.num_rows
                bar.update(size)
                if limit is not None and rows >= limit:
                    break
        bar.close()
        if report.skipped:
            logger.warning("skipped %d invalid record(s) of %d: %s", report.skipped, report.records,
                           report.skipped_reasons)
        if not rows:
            raise DataError(f"{','.join(entries)}: no usable record (read {report.records}, skipped {report.skipped})")
        meta = {"rows": rows, "entry_rows": entry_rows, "entries": entries, "options": options,
                "report": asdict(report), "bytes": (staging / "data.arrow").stat().st_size,
                "seconds": round(time.time() - started, 1), "processes": workers}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same cache first: theirs is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        _JOB.clear()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("encoded %d rows in %.1f s with %d process(es); cached in %s", rows, time.time() - started, workers,
                folder)
    return read_store(folder)


def record_chunks(entries: list[str]) -> Iterator[tuple[int, list, int]]:
    """(entry index, [(where, raw line or parsed record, is first line)], bytes) in file order.

    jsonl lines travel raw, so parsing them happens in the workers; .json, .parquet and hub records arrive parsed.
    """
    for entry_index, entry in enumerate(entries):
        chunk, size = [], 0
        for where, payload, first in entry_payloads(entry):
            chunk.append((where, payload, first))
            size += len(payload) if isinstance(payload, bytes) else 0
            if len(chunk) == CHUNK_RECORDS:
                yield entry_index, chunk, size
                chunk, size = [], 0
        if chunk:
            yield entry_index, chunk, size


def entry_payloads(entry: str) -> Iterator[tuple[str, Any, bool]]:
    if is_hub_entry(entry):
        for where, record in iter_entry_records(entry):
            yield where, record, False
        return
    for file in entry_files(entry):
        if file.suffix.lower() in (".json", ".parquet"):
            for where, record in iter_raw_records(file):
                yield where, record, False
            continue
        with open(file, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                yield f"{file}:{line_number}", raw, line_number == 1


def encoded_chunks(chunks: Iterator[tuple[int, list, int]], workers: int) -> Iterator[tuple]:
    """encode_chunk over every chunk, in order: here, or in `workers` forked processes (a few chunks ahead)."""
    if workers <= 1:
        for entry_index, chunk, size in chunks:
            yield (entry_index, *encode_chunk(chunk), size)
        return
    # The tokenizer may have used its threads already; forked children must not (and must not warn about it).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for entry_index, chunk, size in chunks:
            pending.append((entry_index, pool.apply_async(encode_chunk, (chunk,)), size))
            if len(pending) >= 4 * workers:  # bounded: the file is never read far ahead of the encoding
                entry_index, result, size = pending.popleft()
                yield (entry_index, *result.get(), size)
        while pending:
            entry_index, result, size = pending.popleft()
            yield (entry_index, *result.get(), size)


def encode_chunk(chunk: list[tuple[str, Any, bool]]) -> tuple[pyarrow.RecordBatch, int, list[tuple[str, str]]]:
    """Parse, check and encode one chunk of records → (Arrow rows, records read, [(skip message, where)])."""
    job = _JOB
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    records, skipped = 0, []
    for where, payload, first in chunk:
        record = parse_jsonl_line(payload, where, first) if isinstance(payload, bytes) else payload
        if record is BLANK_LINE:
            continue
        records += 1
        try:
            if isinstance(record, DataError):
                raise record
            conversation = to_conversation(record, where, job["dataset_format"])
        except DataError as err:
            if not job["skip_invalid"]:
                raise
            skipped.append((str(err), where))
            continue
        sample = encode_checked(conversation, job["tokenizer"], job["chat_format"], job["max_len"],
                                job["mask_history"])
        columns["input_ids"].append(sample.input_ids)
        columns["labels"].append(sample.labels)
        columns["length"].append(len(sample.input_ids))
        columns["trained"].append(sample.num_trained)
        columns["truncated"].append(sample.truncated)
        columns["source"].append(where)
    return pyarrow.RecordBatch.from_pydict(columns, schema=SCHEMA), records, skipped


def select_rows(entry_rows: list[int], factors: list[float], seed: int, max_samples: Optional[int]) -> numpy.ndarray:
    """Row numbers after mixing each entry by its ratio (sources.apply_ratio) and cutting to max_samples."""
    parts, start = [], 0
    for count, factor in zip(entry_rows, factors):
        rows = numpy.arange(start, start + count)
        parts.append(rows if factor == 1.0 else numpy.asarray(apply_ratio(rows.tolist(), factor, seed), dtype=int))
        start += count
    selected = numpy.concatenate(parts) if parts else numpy.arange(0)
    return selected[:max_samples] if max_samples is not None else selected


def keep_trained(store: EncodedStore, rows: numpy.ndarray, max_len: int) -> tuple[numpy.ndarray, EncodeStats]:
    """Drop (and count) the rows left with no trained token after truncation; the stats of what remains."""
    trained = store.column("trained")[rows]
    kept = rows[trained > 0]
    stats = stats_of(store, kept, dropped=len(rows) - len(kept))
    stats.truncated = int(store.column("truncated")[rows].sum())
    if stats.dropped_no_label:
        logger.warning("dropped %d sample(s) with no trained token left after truncation to max_len",
                       stats.dropped_no_label)
    if not len(kept):
        raise DataError(f"no sample has a trained token within max_len={max_len}: raise max_len")
    return kept, stats


def stats_of(store: EncodedStore, rows: numpy.ndarray, dropped: int) -> EncodeStats:
    lengths = store.column("length")[rows]
    return EncodeStats(samples=len(rows), truncated=int(store.column("truncated")[rows].sum()),
                       dropped_no_label=dropped, tokens=int(lengths.sum()),
                       trained_tokens=int(store.column("trained")[rows].sum()), lengths=lengths)


def split_held_out(rows: numpy.ndarray, size: float, seed: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """`val_set_size` of the rows (a share below 1, else a count), drawn with the seed; both parts keep file order."""
    count = int(round(size * len(rows))) if size < 1 else int(size)
    if not 0 < count < len(rows):
        raise DataError(f"val_set_size {size:g} leaves no training or no held-out sample of {len(rows)}")
    order = numpy.random.default_rng(seed).permutation(len(rows))
    return rows[numpy.sort(order[count:])], rows[numpy.sort(order[:count])]


def main(argv: list[str]) -> int:
    """`dojo prepare CONFIG.yaml [key=value ...]`: encode the config's data into the cache, report what it holds."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from llm_dojo.config import load_config
    from llm_dojo.models.loading import load_tokenizer

    config_path = argv[0] if "=" not in argv[0] else None
    config = load_config(config_path, argv[1:] if config_path else argv)
    started = time.time()
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    data = open_training_data(config.data, tokenizer, config.training.seed)
    held_out = f"; held out: {data.eval_stats.summary()}" if data.eval_stats else ""
    print(f"dojo prepare: {data.stats.summary()}{held_out}; cached in {data.cache_dir} "
          f"({time.time() - started:.1f} s)")
    return 0
