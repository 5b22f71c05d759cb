"""Data users bring: a UTF-8 BOM, OpenAI content parts, TRL's prompt–completion records, prompt records for inference."""

from __future__ import annotations

import json

import pytest

from llm_dojo.data.records import load_conversations, prompt_messages, to_conversation
from llm_dojo.data.sources import DataError

ANSWER = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def test_a_utf8_bom_at_the_start_of_a_jsonl_file_is_not_data(tmp_path):
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps({"instruction": "Hi", "output": "Hello"}), json.dumps({"instruction": "Yo", "output": "Hey"})]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8") + b"\n")
    conversations, report = load_conversations(str(path))
    assert report.records == 2 and conversations[0].messages == ANSWER


def test_a_utf8_bom_at_the_start_of_a_json_file_is_not_data(tmp_path):
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "Hi", "output": "Hello"}]).encode("utf-8"))
    conversations, _ = load_conversations(str(path))
    assert conversations[0].messages == ANSWER


def test_openai_text_content_parts_are_joined():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]}
    assert to_conversation(record, "f.jsonl:1").messages == ANSWER


def test_an_image_part_is_refused_naming_the_field():
    record = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                           {"role": "assistant", "content": "Hello"}]}
    with pytest.raises(DataError, match=r"f.jsonl:1: field 'messages\[0\].content' .* item 0 is 'image_url'"):
        to_conversation(record, "f.jsonl:1")


@pytest.mark.parametrize("record, expected", [
    ({"prompt": "Hi", "completion": "Hello"}, ANSWER),
    ({"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]},
     ANSWER),
    ({"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
      "completion": "Hello"}, [{"role": "system", "content": "Be kind."}] + ANSWER),
])
def test_trl_prompt_completion_records_become_conversations(record, expected):
    assert to_conversation(record, "f.jsonl:1").messages == expected


@pytest.mark.parametrize("record, fragment", [
    ({"prompt": "Hi", "completion": [{"role": "user", "content": "Hello"}]}, "field 'completion' may only hold"),
    ({"prompt": "Hi", "completion": ""}, "field 'completion' is empty"),
    ({"prompt": 3, "completion": "Hello"}, "field 'prompt' must be a list"),
    ({"prompt": "Hi"}, "'prompt' + 'completion'"),
])
def test_bad_prompt_completion_records_name_the_field(record, fragment):
    with pytest.raises(DataError) as info:
        to_conversation(record, "f.jsonl:7")
    assert str(info.value).startswith("f.jsonl:7: ") and fragment in str(info.value)


def test_dataset_format_completion_is_accepted_by_the_config():
    from llm_dojo.config import load_config

    config = load_config(None, ["train_data_path=x.jsonl", "dataset_format=completion"])
    assert config.data.dataset_format == "completion"


def test_skipped_reasons_are_whole_sentences(tmp_path):
    path = tmp_path / "mixed.jsonl"
    bad = {"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    path.write_text("\n".join(json.dumps(r) for r in [{"instruction": "Hi", "output": "Hello"}, bad, bad]) + "\n")
    _, report = load_conversations(str(path), skip_invalid=True)
    assert report.skipped_reasons == {"field 'messages[0].role' has unknown role 'human'": 2}


@pytest.mark.parametrize("record, expected", [
    ({"prompt": "Hi"}, [{"role": "user", "content": "Hi"}]),
    ({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
     [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}, [{"role": "user", "content": "Hi"}]),
    ({"instruction": "Sum:", "input": "1 2"}, [{"role": "user", "content": "Sum:\n1 2"}]),
])
def test_prompt_records_for_inference_use_the_same_validator(record, expected):
    assert prompt_messages(record, "in.jsonl:1") == expected


def test_a_prompt_must_end_with_the_user():
    with pytest.raises(DataError, match="must end with a user"):
        prompt_messages({"messages": ANSWER}, "in.jsonl:1")
