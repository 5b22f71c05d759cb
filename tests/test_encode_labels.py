"""Labels: exactly the assistant answers plus their end-of-turn terminators are trained, for every family."""

from __future__ import annotations

import re

import pytest

from conftest import TOOL_RECORD, TOOLS, family_tokenizer
from llm_dojo.data.chat_format import resolve_chat_format
from llm_dojo.data.encode import IGNORE_INDEX, encode_conversation, encode_dataset
from llm_dojo.data.records import Conversation
from llm_dojo.templates import get_template, template_names

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "Say hello"},
    {"role": "assistant", "content": "Hello"},  # equal to text inside the user turn: must not match there
]


def trained_runs(tokenizer, sample) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token, "a trained label must be the token itself (the shift happens in the loss)"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def assert_runs_are_answers(runs: list[str], answers: list[str], terminator: str) -> None:
    assert len(runs) == len(answers), runs
    for run, answer in zip(runs, answers):
        # A leading space may belong to the answer's first token (" Hello"); whitespace may sit before the terminator.
        pattern = re.escape(answer.strip()) + r"\s*" + re.escape(terminator)
        assert re.fullmatch(pattern, run.lstrip()), (run, answer, terminator)


@pytest.mark.parametrize("name", template_names())
def test_labels_cover_exactly_answers_and_terminators_for_every_family(name, smol_tokenizer):
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    messages = ([SYSTEM] if spec.supports_system else []) + TURNS
    chat_format = resolve_chat_format(tokenizer, name)
    sample = encode_conversation(messages, tokenizer, chat_format, max_len=4096)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert_runs_are_answers(trained_runs(tokenizer, sample), answers, spec.terminator)
    # The text we train on is the official rendering, byte for byte (plus the stop token where a template omits it).
    official = tokenizer.apply_chat_template(messages, tokenize=False)
    decoded = tokenizer.decode(sample.input_ids)
    assert decoded == official + (spec.terminator if chat_format.append_terminator_at_end else "")


@pytest.mark.parametrize("name", template_names())
def test_mask_history_trains_only_the_last_answer(name, smol_tokenizer):
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    messages = ([SYSTEM] if spec.supports_system else []) + TURNS
    sample = encode_conversation(messages, tokenizer, resolve_chat_format(tokenizer, name), 4096, mask_history=True)
    assert_runs_are_answers(trained_runs(tokenizer, sample), ["Hello"], spec.terminator)


REASONING_TURNS = [
    {"role": "user", "content": "What is 3*3?"},
    {"role": "assistant", "content": "<think>\nThree threes.\n</think>\n\n9"},
    {"role": "user", "content": "And 4*4?"},
    {"role": "assistant", "content": "<think>\nFour fours.\n</think>\n\n16"},
]


def test_qwen3_trains_history_without_reasoning_and_the_final_think_block(smol_tokenizer):
    spec = get_template("qwen3")
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    sample = encode_conversation(REASONING_TURNS, tokenizer, resolve_chat_format(tokenizer, "qwen3"), 4096)
    rendered = tokenizer.apply_chat_template(REASONING_TURNS, tokenize=False)
    assert "Three threes" not in rendered and "Four fours" in rendered  # official: earlier reasoning dropped
    assert trained_runs(tokenizer, sample) == ["9<|im_end|>", "<think>\nFour fours.\n</think>\n\n16<|im_end|>"]


def test_deepseek_r1_trains_answers_as_its_template_renders_them(smol_tokenizer):
    spec = get_template("deepseek-r1")
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    sample = encode_conversation(REASONING_TURNS, tokenizer, resolve_chat_format(tokenizer, "deepseek-r1"), 4096)
    rendered = tokenizer.apply_chat_template(REASONING_TURNS, tokenize=False)
    # R1's official template strips the reasoning of every assistant turn it renders; we train what it shows.
    assert "think" not in rendered.replace("<think>", "")
    end = spec.terminator
    assert [run.strip() for run in trained_runs(tokenizer, sample)] == [f"9{end}", f"16{end}"]


def test_smollm2_multiturn_with_system_trains_exactly_answers_and_im_end(smol_tokenizer):
    messages = [SYSTEM] + TURNS
    chat_format = resolve_chat_format(smol_tokenizer)
    assert chat_format.name == "smollm2" and chat_format.terminator == "<|im_end|>"
    sample = encode_conversation(messages, smol_tokenizer, chat_format, 4096)
    assert trained_runs(smol_tokenizer, sample) == [
        "Hello! How can I help?<|im_end|>", "2 + 2 = 4.<|im_end|>", "Hello<|im_end|>"
    ]
    # pad == eos == <|im_end|> here: the end of turn must still be trained (the classic silent bug).
    assert smol_tokenizer.pad_token_id == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t, l in zip(sample.input_ids, sample.labels)
               if l != IGNORE_INDEX and t == smol_tokenizer.pad_token_id) == 3


def test_default_system_prompt_is_rendered_and_masked(smol_tokenizer):
    sample = encode_conversation(TURNS[:2], smol_tokenizer, resolve_chat_format(smol_tokenizer), 4096)
    text = smol_tokenizer.decode(sample.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert trained_runs(smol_tokenizer, sample) == ["Hello! How can I help?<|im_end|>"]


def test_truncation_keeps_labels_aligned_and_drops_samples_with_nothing_trained(smol_tokenizer):
    chat_format = resolve_chat_format(smol_tokenizer)
    full = encode_conversation(TURNS, smol_tokenizer, chat_format, 4096)
    cut = encode_conversation(TURNS, smol_tokenizer, chat_format, 40)
    assert cut.truncated and len(cut.input_ids) == 40
    assert cut.input_ids == full.input_ids[:40] and cut.labels == full.labels[:40]
    long_prompt = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    conversations = [Conversation(TURNS[:2], "a:1"), Conversation(long_prompt, "a:2")]
    samples, stats = encode_dataset(conversations, smol_tokenizer, chat_format, max_len=64)
    assert len(samples) == 1 and stats.dropped_no_label == 1 and stats.truncated == 1


def test_tokenizer_without_template_and_auto_gives_a_clear_error(smol_tokenizer):
    import copy

    from llm_dojo.data.records import DataError

    bare = copy.deepcopy(smol_tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="template_name"):
        resolve_chat_format(bare, "auto")
    assert resolve_chat_format(bare, "smollm2").terminator == "<|im_end|>"




@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "llama3.1"])
def test_tool_call_turns_are_trained_as_the_template_renders_them(name, smol_tokenizer):
    from llm_dojo.data.records import to_conversation

    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    conversation = to_conversation(TOOL_RECORD, "tools.jsonl:1")
    chat_format = resolve_chat_format(tokenizer, name)
    sample = encode_conversation(conversation.messages, tokenizer, chat_format, 4096, tools=conversation.tools)
    runs = trained_runs(tokenizer, sample)
    rendered = tokenizer.apply_chat_template(conversation.messages, tokenize=False, tools=TOOLS)
    assert len(runs) == 2, runs
    assert "get_weather" in runs[0] and "Paris" in runs[0] and runs[0].endswith(spec.terminator)
    assert runs[0].strip() in rendered  # the call exactly as the official template writes it
    assert "18 C, sunny" not in "".join(runs)  # the tool's result is input, never trained
    assert runs[1].strip() == "It is 18 C and sunny in Paris." + spec.terminator
