"""The official chat-template registry: loading, rendering parity with transformers, pinned facts, docs, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jinja2 import TemplateError

from llm_dojo.templates import TemplateSpec, get_template, render, template_names
from llm_dojo.templates.cli import main as template_cli
from llm_dojo.templates.render import render_template_string

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_NAMES = [
    "qwen1.5", "qwen2", "qwen2.5", "qwen3", "yi", "yi-1.5", "gemma", "gemma2", "gemma3", "phi3", "phi3.5", "phi4",
    "deepseek", "deepseek-v2", "deepseek-v3", "deepseek-r1", "deepseek-coder", "llama2", "llama3", "llama3.1",
    "mistral-v0.2", "mistral-v0.3", "glm4", "internlm2", "smollm2",
]

SYSTEM = {"role": "system", "content": "You are terse."}
ONE_TURN = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
TWO_TURNS = ONE_TURN + [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": " 4 "}]


def conversations_for(spec: TemplateSpec) -> list[tuple[list[dict], bool]]:
    """(messages, add_generation_prompt) pairs every template must render."""
    convs = [(ONE_TURN, False), (TWO_TURNS, False), (TWO_TURNS[:-1], True), (TWO_TURNS[:1], True)]
    if spec.supports_system:
        convs += [([SYSTEM] + TWO_TURNS, False), ([SYSTEM] + TWO_TURNS[:-1], True)]
    return convs


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from llm_dojo.models.embedded import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


# ---- the registry itself ------------------------------------------------------------------------------------


def test_registry_lists_exactly_the_25_families_in_order():
    assert template_names() == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_entry_loads_with_complete_fields(name):
    spec = get_template(name)
    assert spec.name == name
    assert "{%" in spec.chat_template or "{{" in spec.chat_template
    assert spec.model_id.count("/") == 1
    assert spec.source and spec.terminator
    assert isinstance(spec.supports_system, bool)
    assert spec.terminator in spec.special_tokens or spec.terminator in (spec.eos_token,)
    assert all(isinstance(note, str) for note in spec.notes)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: qwen1.5, qwen2"):
        get_template("gpt-5")


def test_loading_is_cached():
    assert get_template("qwen2.5") is get_template("qwen2.5")


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_template_renders_several_conversations(name):
    spec = get_template(name)
    for messages, add_generation_prompt in conversations_for(spec):
        text = render(name, messages, add_generation_prompt=add_generation_prompt)
        assert "Hi there" in text
        if not add_generation_prompt and messages[-1]["role"] == "assistant":
            assert spec.terminator in text or name == "glm4"  # GLM-4 turns have no end marker


# ---- parity with transformers' apply_chat_template ------------------------------------------------------------


def test_render_template_string_matches_the_embedded_tokenizer(embedded_tokenizer):
    tok = embedded_tokenizer
    for messages, add_generation_prompt in conversations_for(get_template("smollm2")):
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        got = render_template_string(tok.chat_template, messages, special_tokens=tok.special_tokens_map,
                                     add_generation_prompt=add_generation_prompt)
        assert got == expected
        assert render("smollm2", messages, add_generation_prompt=add_generation_prompt) == expected


def test_registry_smollm2_is_the_embedded_models_own_template(embedded_tokenizer):
    assert get_template("smollm2").chat_template == embedded_tokenizer.chat_template


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_render_equals_apply_chat_template_with_the_entry_swapped_in(name, embedded_tokenizer):
    spec = get_template(name)
    for messages, add_generation_prompt in conversations_for(spec):
        expected = embedded_tokenizer.apply_chat_template(
            messages, chat_template=spec.chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt, **spec.special_tokens_map(),
        )
        assert render(name, messages, add_generation_prompt=add_generation_prompt) == expected


# ---- known facts of the official templates, pinned with exact strings ----------------------------------------


def test_smollm2_inserts_its_default_system_prompt():
    assert get_template("smollm2").default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert render("smollm2", ONE_TURN[:1], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen25_default_system_prompt():
    assert render("qwen2.5", ONE_TURN[:1]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
    )


def test_qwen15_default_system_prompt_ends_with_a_period():
    # Qwen's April 2024 update of the Qwen1.5-*-Chat tokenizer configs added the period; the older string lacks it.
    assert get_template("qwen1.5").default_system == "You are a helpful assistant."
    assert render("qwen1.5", ONE_TURN[:1], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen15_closes_every_turn_and_keeps_content_verbatim():
    assert render("qwen1.5", [SYSTEM] + TWO_TURNS) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n 4 <|im_end|>\n"
    )
    assert render("qwen1.5", TWO_TURNS) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n 4 <|im_end|>\n"
    )


def test_llama3_header_format_and_trimmed_content():
    assert render("llama3", [SYSTEM] + TWO_TURNS, add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    )


def test_llama31_always_emits_the_date_header():
    assert render("llama3.1", ONE_TURN[:1], add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("name", ["gemma", "gemma2"])
def test_gemma_raises_on_a_system_message(name):
    with pytest.raises(TemplateError, match="System role not supported"):
        render(name, [SYSTEM] + ONE_TURN)


def test_gemma3_folds_the_system_prompt_into_the_first_user_turn():
    assert render("gemma3", [SYSTEM] + ONE_TURN[:1], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )


def test_mistral_v03_puts_the_system_prompt_in_the_last_user_turn_only():
    prompt = render("mistral-v0.3", [SYSTEM] + TWO_TURNS[:-1])
    assert prompt == "<s>[INST] Hi there[/INST] Hello!</s>[INST] You are terse.\n\nWhat is 2+2?[/INST]"
    full = render("mistral-v0.3", [SYSTEM] + TWO_TURNS)
    assert full == "<s>[INST] Hi there[/INST] Hello!</s>[INST] What is 2+2?[/INST] 4</s>"
    assert "You are terse." not in full


def test_mistral_v02_puts_the_system_prompt_in_the_first_user_turn():
    assert render("mistral-v0.2", [SYSTEM] + ONE_TURN) == "<s> [INST] You are terse.\n\nHi there [/INST] Hello!</s>"


def test_qwen3_drops_think_blocks_before_the_last_user_query():
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nreasoning one\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nreasoning two\n</think>\n\nA2"},
    ]
    assert render("qwen3", messages) == (
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nreasoning two\n</think>\n\nA2<|im_end|>\n"
    )


def test_qwen3_adds_an_empty_think_block_to_the_final_answer():
    assert render("qwen3", ONE_TURN).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")


def test_phi3_appends_endoftext_without_generation_prompt():
    assert render("phi3", ONE_TURN).endswith("<|assistant|>\nHello!<|end|>\n<|endoftext|>")
    assert render("phi3", ONE_TURN[:1], add_generation_prompt=True).endswith("<|assistant|>\n")


def test_yi15_prints_system_raw_and_ignores_generation_prompt():
    with_prompt = render("yi-1.5", [SYSTEM] + ONE_TURN[:1], add_generation_prompt=True)
    without = render("yi-1.5", [SYSTEM] + ONE_TURN[:1], add_generation_prompt=False)
    assert with_prompt == without == "You are terse.<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_deepseek_r1_strips_reasoning_and_opens_a_think_block():
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>x</think>A"},
                {"role": "user", "content": "Q2"}]
    assert render("deepseek-r1", messages, add_generation_prompt=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜>A<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>\n"
    )


def test_glm4_turns_have_no_end_marker():
    assert render("glm4", ONE_TURN) == "[gMASK]<sop><|user|>\nHi there<|assistant|>\nHello!"


# ---- generated docs -------------------------------------------------------------------------------------------


def test_generated_docs_are_up_to_date(capsys):
    spec = importlib.util.spec_from_file_location("gen_chat_template_docs", ROOT / "scripts" / "gen_chat_template_docs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.main(["--check"]) == 0, capsys.readouterr().err


# ---- CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def messages_file(tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps([SYSTEM] + TWO_TURNS[:-1]), encoding="utf-8")
    return path


def test_cli_render_prints_exactly_the_rendered_text(messages_file, capsys):
    assert template_cli(["render", "--name", "qwen2.5", "--messages", str(messages_file), "--add-generation-prompt"]) == 0
    out = capsys.readouterr().out
    assert out == render("qwen2.5", [SYSTEM] + TWO_TURNS[:-1], add_generation_prompt=True)


def test_cli_render_passes_tools(messages_file, tmp_path, capsys):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add", "parameters": {"type": "object"}}}]
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(tools), encoding="utf-8")
    assert template_cli(["render", "--name", "qwen2.5", "--messages", str(messages_file), "--tools", str(tools_file)]) == 0
    out = capsys.readouterr().out
    assert out == render("qwen2.5", [SYSTEM] + TWO_TURNS[:-1], tools=tools)
    assert '"name": "add"' in out


def test_cli_render_via_dojo_subprocess(messages_file):
    result = subprocess.run(
        [sys.executable, "-m", "llm_dojo.cli", "template", "render", "--name", "llama3.1", "--messages", str(messages_file)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render("llama3.1", [SYSTEM] + TWO_TURNS[:-1])


def test_cli_list_and_show(capsys):
    assert template_cli(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == EXPECTED_NAMES
    assert template_cli(["show", "gemma"]) == 0
    assert "System role not supported" in capsys.readouterr().out


@pytest.mark.parametrize("content, expected", [
    (None, "messages file not found"),
    ("{not json", "invalid JSON at line 1"),
    ('{"role": "user"}', "expected a non-empty JSON list"),
    ('[{"content": "hi"}]', "message 0 has no string field 'role'"),
    ('[{"role": "user"}]', "message 0 has no field 'content'"),
])
def test_cli_rejects_bad_messages_with_one_line_and_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert template_cli(["render", "--name", "qwen2", "--messages", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and err.count("\n") == 1


def test_cli_unknown_name_exits_2(messages_file, capsys):
    assert template_cli(["render", "--name", "nope", "--messages", str(messages_file)]) == 2
    assert "unknown chat template 'nope'" in capsys.readouterr().err


def test_cli_template_that_raises_names_the_template(messages_file, capsys):
    assert template_cli(["render", "--name", "gemma", "--messages", str(messages_file)]) == 2
    err = capsys.readouterr().err
    assert "template 'gemma'" in err and "System role not supported" in err and err.count("\n") == 1
