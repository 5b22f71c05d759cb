"""Data folders: every data file whatever the case of its suffix, never hidden copies, and a log of what was read."""

from __future__ import annotations

import json
import logging
import time

import pytest

from llm_dojo.data.records import DataError, load_conversations


def record(text: str) -> dict:
    return {"instruction": text, "output": "ok"}


def write_records(path, texts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record(t)) + "\n" for t in texts), encoding="utf-8")


@pytest.fixture
def notebook_folder(tmp_path):
    """A folder as a notebook user leaves it: 10 + 5 records, a csv, a txt, and Jupyter's checkpoint copies."""
    folder = tmp_path / "data"
    write_records(folder / "a.jsonl", [f"a{i}" for i in range(10)])
    write_records(folder / "B.JSONL", [f"b{i}" for i in range(5)])
    (folder / "table.csv").write_text("instruction,output\nhi,ok\n")
    (folder / "notes.txt").write_text("where the data came from\n")
    write_records(folder / ".ipynb_checkpoints" / "a-checkpoint.jsonl", [f"a{i}" for i in range(10)])
    write_records(folder / ".ipynb_checkpoints" / "B-checkpoint.JSONL", [f"b{i}" for i in range(5)])
    write_records(folder / ".hidden.jsonl", ["hidden"])
    return folder


def test_folder_reads_upper_case_suffixes_skips_hidden_copies_and_logs_what_it_read(notebook_folder, caplog):
    caplog.set_level(logging.INFO, logger="llm_dojo.data.sources")
    conversations, report = load_conversations(str(notebook_folder))
    assert report.records == 15 and len(conversations) == 15
    assert sorted(c.messages[0]["content"] for c in conversations) == sorted(
        [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)])
    assert not any(".ipynb_checkpoints" in c.source or ".hidden" in c.source for c in conversations)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{notebook_folder}: skipped 2 file(s) that are not .jsonl/.json/.parquet: "
                        f"notes.txt, table.csv"]
    read = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith("read ")]
    assert read == [f"read 5 record(s) from {notebook_folder / 'B.JSONL'}",
                    f"read 10 record(s) from {notebook_folder / 'a.jsonl'}"]


def test_files_in_subfolders_are_read_but_not_under_hidden_folders(tmp_path):
    (tmp_path / "d" / "part1").mkdir(parents=True)
    (tmp_path / "d" / "part1" / "x.json").write_text(json.dumps([record("x1"), record("x2")]))
    write_records(tmp_path / "d" / ".git" / "y.jsonl", ["git"])
    write_records(tmp_path / "d" / "part2" / ".cache" / "z.jsonl", ["cache"])
    conversations, _ = load_conversations(str(tmp_path / "d"))
    assert [c.messages[0]["content"] for c in conversations] == ["x1", "x2"]


def test_single_files_with_upper_case_suffixes_are_read_by_their_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_records(tmp_path / "TRAIN.JSONL", ["j1", "j2"])
    (tmp_path / "ALL.JSON").write_text(json.dumps([record("a1")]))
    pq.write_table(pa.Table.from_pylist([record("p1"), record("p2"), record("p3")]), tmp_path / "T.PARQUET")
    for name, expected in [("TRAIN.JSONL", ["j1", "j2"]), ("ALL.JSON", ["a1"]), ("T.PARQUET", ["p1", "p2", "p3"])]:
        conversations, _ = load_conversations(str(tmp_path / name))
        assert [c.messages[0]["content"] for c in conversations] == expected


def test_folder_without_data_files_names_the_folder_and_what_it_holds(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "table.csv").write_text("a,b\n")
    (folder / "notes.txt").write_text("x\n")
    write_records(folder / ".ipynb_checkpoints" / "a-checkpoint.jsonl", ["hidden"])
    with pytest.raises(DataError) as info:
        load_conversations(str(folder))
    message = str(info.value)
    assert message.startswith(f"{folder}: folder has no .jsonl/.json/.parquet file")
    assert "it holds .ipynb_checkpoints/, notes.txt, table.csv" in message and "hidden" in message


@pytest.fixture
def hub_calls(monkeypatch):
    """Record every hub dataset lookup instead of making it (a missing local file must never get here)."""
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **_):
        calls.append((name, split))
        return [record("from the hub")]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


@pytest.mark.parametrize("entry", ["data/nope.jsonl", "data/NOPE.JSON", "org/nope.parquet"])
def test_a_missing_data_file_is_not_found_without_a_hub_lookup(tmp_path, monkeypatch, hub_calls, entry):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    start = time.monotonic()
    with pytest.raises(DataError, match=f"^{entry}: data file not found"):
        load_conversations(entry)
    assert time.monotonic() - start < 5
    assert hub_calls == []


def test_a_name_without_a_data_suffix_is_still_a_hub_dataset(tmp_path, monkeypatch, hub_calls):
    monkeypatch.chdir(tmp_path)
    conversations, _ = load_conversations("some-org/some-dataset:test")
    assert hub_calls == [("some-org/some-dataset", "test")]
    assert conversations[0].messages[0]["content"] == "from the hub"
