"""The on-disk store (llm_dojo/data/store.py) trains on exactly what the in-memory path encodes, caches it under a
fingerprint, and never leaves a half-written cache behind."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llm_dojo.config import load_config
from llm_dojo.data import store
from llm_dojo.data.prepare import prepare_sft_data
from llm_dojo.data.sources import DataError


def records(n: int) -> list[dict]:
    """Chat records of varied length; every 7th answer is long, so max_len 48 truncates some and drops none."""
    out = []
    for i in range(n):
        answer = f"Answer {i}: " + ("a longer answer with many more words in it " * (6 if i % 7 == 0 else 1))
        if i % 3 == 0:
            out.append({"messages": [{"role": "user", "content": f"Question {i}?"},
                                     {"role": "assistant", "content": answer}]})
        else:
            out.append({"instruction": f"Task {i}", "input": "x" * (i % 5), "output": answer})
    return out


def data_args(path: str, cache: Path, *extra: str):
    return load_config(None, [f"train_data_path={path}", f"data_cache_dir={cache}", *extra]).data


def rows(dataset) -> list[tuple[list[int], list[int]]]:
    return [(row["input_ids"], row["labels"]) for row in dataset]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_store_holds_what_the_in_memory_path_encodes(workers, smol_tokenizer, write_jsonl, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(store, "POOL_MIN_BYTES", 0)  # use the worker processes even for a small file
    monkeypatch.setattr(store, "CHUNK_RECORDS", 7)  # many chunks, so their order matters
    path = write_jsonl(records(60))
    data = data_args(path, tmp_path / "cache", "max_len=48", f"dataset_num_proc={workers}")
    stored = store.open_training_data(data, smol_tokenizer)
    expected = prepare_sft_data(data, smol_tokenizer)
    assert rows(stored.train) == [(s.input_ids, s.labels) for s in expected.train]
    assert stored.stats.truncated == expected.stats.truncated > 0
    assert stored.stats.summary() == expected.stats.summary()
    assert stored.train.column_names == ["input_ids", "labels", "length"]
    assert json.loads((stored.cache_dir / "meta.json").read_text())["processes"] == workers


def test_ratios_max_samples_and_dropped_samples_select_as_before(smol_tokenizer, write_jsonl, tmp_path):
    first = write_jsonl(records(20), "a.jsonl")
    # max_len 48 leaves the second file's longer prompts with no trained token: they are dropped and counted.
    second = write_jsonl([{"instruction": "word " * (i * 3), "output": "ok"} for i in range(1, 12)], "b.jsonl")
    dropped = []
    for extra in (["train_data_ratios=0.5,2"], ["max_samples=25"], ["train_data_ratios=1,1.5", "max_samples=30"]):
        data = data_args(f"{first},{second}", tmp_path / "cache", "max_len=48", *extra)
        stored = store.open_training_data(data, smol_tokenizer, seed=5)
        expected = prepare_sft_data(data, smol_tokenizer, seed=5)
        assert rows(stored.train) == [(s.input_ids, s.labels) for s in expected.train], extra
        assert stored.stats.dropped_no_label == expected.stats.dropped_no_label, extra
        dropped.append(stored.stats.dropped_no_label)
    assert dropped[0] > 0 and dropped[2] > 0


def test_a_second_run_reuses_the_cache_and_a_changed_input_makes_a_new_one(smol_tokenizer, write_jsonl, tmp_path,
                                                                            monkeypatch):
    path = write_jsonl(records(10))
    cache = tmp_path / "cache"
    first = store.open_training_data(data_args(path, cache), smol_tokenizer)
    calls = []
    real_write = store.write_store
    monkeypatch.setattr(store, "write_store", lambda *a, **k: calls.append(a) or real_write(*a, **k))
    again = store.open_training_data(data_args(path, cache), smol_tokenizer)
    assert again.cache_dir == first.cache_dir and calls == []
    longer = store.open_training_data(data_args(path, cache, "max_len=64"), smol_tokenizer)
    assert longer.cache_dir != first.cache_dir and len(calls) == 1
    write_jsonl(records(11))  # same path, new contents (size and modification time change)
    changed = store.open_training_data(data_args(path, cache), smol_tokenizer)
    assert changed.cache_dir not in (first.cache_dir, longer.cache_dir) and len(changed.train) == 11


def test_a_damaged_cache_is_said_and_encoded_again(smol_tokenizer, write_jsonl, tmp_path, caplog):
    path = write_jsonl(records(10))
    data = data_args(path, tmp_path / "cache")
    first = store.open_training_data(data, smol_tokenizer)
    expected, arrow = rows(first.train), first.cache_dir / "data.arrow"
    del first  # it maps the file: cutting a mapped file short would crash its next read (SIGBUS)
    arrow.write_bytes(arrow.read_bytes()[:100])  # a crash or a full disk cut it short
    with caplog.at_level(logging.WARNING):
        again = store.open_training_data(data, smol_tokenizer)
    assert "damaged" in caplog.text
    assert rows(again.train) == expected


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_record_names_its_line_and_leaves_no_cache(workers, smol_tokenizer, write_jsonl, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(store, "CHUNK_RECORDS", 4)
    lines = [json.dumps(r) for r in records(30)]
    lines[22] = '{"instruction": "no output"}'
    path = write_jsonl(lines)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"data.jsonl:23: .*output"):
        store.open_training_data(data_args(path, cache, f"dataset_num_proc={workers}"), smol_tokenizer)
    assert list(cache.iterdir()) == []  # neither a cache nor a partial one

    skipping = store.open_training_data(data_args(path, cache, "skip_invalid=true", f"dataset_num_proc={workers}"),
                                        smol_tokenizer)
    assert len(skipping.train) == 29
    assert (skipping.report.records, skipping.report.skipped) == (30, 1)


def test_val_set_size_holds_out_a_disjoint_seeded_share(smol_tokenizer, write_jsonl, tmp_path):
    path = write_jsonl(records(40))
    data = data_args(path, tmp_path / "cache", "val_set_size=0.25")
    split = store.open_training_data(data, smol_tokenizer, seed=1)
    assert (len(split.train), len(split.eval)) == (30, 10)
    assert split.stats.samples == 30 and split.eval_stats.samples == 10
    whole = rows(store.open_training_data(data_args(path, tmp_path / "cache"), smol_tokenizer).train)
    held_out, trained = rows(split.eval), rows(split.train)
    assert sorted(held_out + trained) == sorted(whole) and not set(map(str, held_out)) & set(map(str, trained))
    assert rows(store.open_training_data(data, smol_tokenizer, seed=1).eval) == held_out  # same seed, same split
    assert rows(store.open_training_data(data, smol_tokenizer, seed=2).eval) != held_out
    with pytest.raises(DataError, match="not both"):
        store.open_training_data(data_args(path, tmp_path / "cache", "val_set_size=3", f"eval_data_path={path}"),
                                 smol_tokenizer)


def test_dojo_prepare_fills_the_cache_that_training_reads(smol_tokenizer, write_jsonl, tmp_path, capsys):
    path = write_jsonl(records(12))
    cache = tmp_path / "cache"
    assert store.main([f"train_data_path={path}", f"data_cache_dir={cache}"]) == 0
    printed = capsys.readouterr().out
    assert "12 samples" in printed and str(cache) in printed
    folder = next(cache.iterdir())
    assert store.open_training_data(data_args(path, cache), smol_tokenizer).cache_dir == folder
