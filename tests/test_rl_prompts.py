"""Prompt records for stage: grpo: formats, reward columns, clear errors, and prompts too long to answer."""

from __future__ import annotations

import pytest

from llm_dojo.config import DataArguments, RLArguments
from llm_dojo.data.prompts import prepare_prompts
from llm_dojo.data.sources import DataError


def prepare(path, tokenizer, **rl):
    max_len = rl.pop("max_len", 256)
    rl.setdefault("max_completion_length", 32)
    return prepare_prompts(DataArguments(train_data_path=path, max_len=max_len), RLArguments(**rl), tokenizer)


def test_every_prompt_format_renders_the_official_template_with_the_assistant_header(write_jsonl, smol_tokenizer):
    path = write_jsonl([{"prompt": "What is 2 plus 2?", "answer": "4"},
                        {"messages": [{"role": "user", "content": "What is 2 plus 2?"}], "answer": "4"},
                        {"instruction": "What is 2 plus 2?", "answer": "4"},
                        {"instruction": "What is 2 plus 2?", "system": "Be brief.", "answer": "4"}])
    prepared = prepare(path, smol_tokenizer, system_prompt="Be brief.")
    expected = smol_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"}],
        tokenize=False, add_generation_prompt=True)
    for item in prepared.train:
        assert smol_tokenizer.decode(item["prompt_ids"]) == expected
        assert item["columns"] == {"answer": "4"}
    assert prepared.columns == ["answer"]


def test_bad_records_name_the_file_and_line(write_jsonl, smol_tokenizer):
    path = write_jsonl([{"prompt": "fine"}, {"question": "no prompt field"}])
    with pytest.raises(DataError, match=r"data\.jsonl:2.*no 'prompt'"):
        prepare(path, smol_tokenizer)
    path = write_jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
                       "ends_with_answer.jsonl")
    with pytest.raises(DataError, match=r"ends_with_answer\.jsonl:1"):
        prepare(path, smol_tokenizer)
    path = write_jsonl([{"prompt": "hi", "completions": "clash"}], "reserved.jsonl")
    with pytest.raises(DataError, match=r"reserved\.jsonl:1.*'completions'"):
        prepare(path, smol_tokenizer)


def test_prompts_longer_than_max_len_minus_completion_are_dropped_not_cut(write_jsonl, smol_tokenizer):
    path = write_jsonl([{"prompt": "short"}, {"prompt": "long " * 300}])
    prepared = prepare(path, smol_tokenizer, max_len=128, max_completion_length=32)
    assert len(prepared.train) == 1 and prepared.dropped_too_long == 1
    assert all(len(item["prompt_ids"]) <= 96 for item in prepared.train)
    with pytest.raises(DataError, match="max_completion_length"):
        prepare(path, smol_tokenizer, max_len=32, max_completion_length=32)


def test_an_alpaca_system_field_is_the_system_message_not_a_reward_column(write_jsonl, smol_tokenizer):
    path = write_jsonl([{"instruction": "Hi?", "system": "You are Dojo.", "answer": "x"}], "alpaca.jsonl")
    item = prepare(path, smol_tokenizer).train[0]
    assert item["messages"][0] == {"role": "system", "content": "You are Dojo."}
    assert "You are Dojo." in smol_tokenizer.decode(item["prompt_ids"]) and item["columns"] == {"answer": "x"}
