"""Bad input stops before training with an error naming the file, the line and the field — or is skipped."""

from __future__ import annotations

import json
import re

import pytest

from conftest import CHAT_RECORDS
from llm_dojo.data.records import MAX_RECORD_BYTES, DataError, load_conversations

GOOD = {"instruction": "Hi", "output": "Hello"}

# (case name, the bad line as a record or raw text, substrings the error must contain besides file and line)
MALFORMED = [
    ("not_json", '{"instruction": "Hi", "output": ', ["not valid JSON"]),
    ("not_an_object", "[1, 2, 3]", ["JSON object"]),
    ("unknown_format", {"question": "Hi", "answer": "Hello"}, ["unknown record format", "question"]),
    ("missing_output", {"instruction": "Hi"}, ["'output'", "missing"]),
    ("missing_instruction", {"output": "Hello"}, ["'instruction'", "missing"]),
    ("empty_output", {"instruction": "Hi", "output": "   "}, ["'output'", "empty"]),
    ("output_wrong_type", {"instruction": "Hi", "output": 42}, ["'output'", "string", "int"]),
    ("history_not_list", {"instruction": "Hi", "output": "Yo", "history": "x"}, ["'history'", "list"]),
    ("history_not_pairs", {"instruction": "Hi", "output": "Yo", "history": [["a"]]}, ["'history[0]'", "pair"]),
    ("messages_not_list", {"messages": "hello"}, ["'messages'", "list"]),
    ("messages_empty", {"messages": []}, ["'messages'", "empty"]),
    ("message_not_object", {"messages": ["hi"]}, ["'messages[0]'", "object"]),
    ("wrong_role", {"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
     ["'messages[0].role'", "unknown role 'human'"]),
    ("missing_content", {"messages": [{"role": "user"}, {"role": "assistant", "content": "Yo"}]},
     ["'messages[0].content'", "missing"]),
    ("non_string_content", {"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "Yo"}]},
     ["'messages[0].content'", "string", "list"]),
    ("empty_content", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
     ["'messages[1].content'", "empty"]),
    ("assistant_first", {"messages": [{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Hi"}]},
     ["'role'", "first turn must be from the user"]),
    ("not_alternating", {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Yo"}]}, ["alternate", "'user' follows 'user'"]),
    ("ends_with_user", {"messages": [{"role": "user", "content": "Hi"}]}, ["must end with an assistant turn"]),
    ("system_not_first", {"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "S"},
                                       {"role": "assistant", "content": "Yo"}]}, ["system message may only be the first"]),
    ("sharegpt_unknown_from", {"conversations": [{"from": "bot", "value": "Hi"}]},
     ["'conversations[0].from'", "unknown role 'bot'"]),
    ("sharegpt_value_wrong_type", {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]},
     ["'conversations[0].value'", "string"]),
]


def write_lines(tmp_path, lines: list, name: str = "train.jsonl"):
    path = tmp_path / name
    with open(path, "wb") as handle:
        for line in lines:
            if isinstance(line, bytes):
                handle.write(line + b"\n")
            elif isinstance(line, str):
                handle.write(line.encode("utf-8") + b"\n")
            else:
                handle.write(json.dumps(line).encode("utf-8") + b"\n")
    return path


@pytest.mark.parametrize("case,bad,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_record_error_names_file_line_and_field(tmp_path, case, bad, expected):
    path = write_lines(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_invalid_utf8_and_oversized_lines_are_reported_with_their_line(tmp_path):
    path = write_lines(tmp_path, [GOOD, b'{"instruction": "caf\xe9", "output": "x"}'])
    with pytest.raises(DataError, match=rf"{path}:2: invalid UTF-8"):
        load_conversations(str(path))
    huge = json.dumps({"instruction": "x" * (MAX_RECORD_BYTES + 10), "output": "y"})
    path = write_lines(tmp_path, [GOOD, GOOD, huge], "huge.jsonl")
    with pytest.raises(DataError, match=rf"{path}:3: line is .* over the"):
        load_conversations(str(path))


def test_skip_invalid_skips_and_counts_every_bad_record_and_keeps_only_good_ones(tmp_path):
    bad_lines = [bad for _, bad, _ in MALFORMED] + [b"\xff\xfe not utf8"]
    path = write_lines(tmp_path, [GOOD] + bad_lines + [GOOD])
    conversations, report = load_conversations(str(path), skip_invalid=True)
    assert len(conversations) == 2
    assert report.skipped == len(bad_lines) and report.records == len(bad_lines) + 2
    assert [c.source for c in conversations] == [f"{path}:1", f"{path}:{len(bad_lines) + 2}"]
    assert sum(report.skipped_reasons.values()) == report.skipped


def test_missing_file_empty_file_and_wrong_suffix(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_conversations(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no usable record"):
        load_conversations(str(empty))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_conversations(str(csv))


def test_all_formats_json_parquet_folder_and_comma_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_lines(tmp_path, CHAT_RECORDS, "a.jsonl")
    (tmp_path / "b.json").write_text(json.dumps([GOOD, GOOD]))
    pq.write_table(pa.Table.from_pylist([GOOD]), tmp_path / "c.parquet")
    conversations, _ = load_conversations(str(tmp_path))
    assert len(conversations) == len(CHAT_RECORDS) + 3
    conversations, _ = load_conversations(f"{jsonl},{tmp_path / 'b.json'}")
    assert len(conversations) == len(CHAT_RECORDS) + 2
    by_format = {c.source.rsplit(":", 1)[0].split("/")[-1] for c in conversations}
    assert by_format == {"a.jsonl", "b.json"}


def test_alpaca_with_input_system_and_history_becomes_messages(tmp_path):
    record = {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be exact.",
              "history": [["Hi", "Hello!"]]}
    conversations, _ = load_conversations(str(write_lines(tmp_path, [record])))
    assert conversations[0].messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\nbonjour"}, {"role": "assistant", "content": "hello"},
    ]


def test_sharegpt_roles_map_to_standard_roles(tmp_path):
    record = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Yo"}]}
    conversations, _ = load_conversations(str(write_lines(tmp_path, [record])))
    assert [m["role"] for m in conversations[0].messages] == ["system", "user", "assistant"]


def test_forced_dataset_format_reports_the_missing_field(tmp_path):
    path = write_lines(tmp_path, [GOOD])
    with pytest.raises(DataError, match=rf"{path}:1: field 'messages' is missing"):
        load_conversations(str(path), dataset_format="messages")


def test_mixing_sources_with_ratios_is_deterministic(tmp_path):
    a = write_lines(tmp_path, [{"instruction": f"a{i}", "output": "x"} for i in range(10)], "a.jsonl")
    b = write_lines(tmp_path, [{"instruction": f"b{i}", "output": "y"} for i in range(4)], "b.jsonl")
    mixed, _ = load_conversations(f"{a},{b}", ratios="0.5,2.5", seed=1)
    names = [c.messages[0]["content"] for c in mixed]
    assert sum(n.startswith("a") for n in names) == 5 and sum(n.startswith("b") for n in names) == 10
    again, _ = load_conversations(f"{a},{b}", ratios="0.5,2.5", seed=1)
    assert [c.source for c in again] == [c.source for c in mixed]
    with pytest.raises(DataError, match="one per train_data_path entry"):
        load_conversations(f"{a},{b}", ratios="1")


def test_an_unreachable_hub_dataset_name_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="no-such-org/no-such-dataset: not a local path, and loading it as a hub"):
        load_conversations("no-such-org/no-such-dataset")


@pytest.mark.parametrize("calls,expected", [
    ([], "'messages[1].tool_calls' must be a non-empty list"),
    ([{"function": {"arguments": {}}}], "'messages[1].tool_calls[0].function.name'"),
    ([{"function": {"name": "f", "arguments": "{bad"}}], "'messages[1].tool_calls[0].function.arguments' is not valid JSON"),
])
def test_malformed_tool_calls_name_the_field(tmp_path, calls, expected):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": calls},
                           {"role": "tool", "content": "x"}, {"role": "assistant", "content": "ok"}]}
    path = write_lines(tmp_path, [record])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field {expected}")):
        load_conversations(str(path))
