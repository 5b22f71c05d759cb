"""Labels at the exact place: the trained characters of the rendering equal spans found independently.

`test_encode_labels.py` compares decoded trained text with the answers. That cannot see *where* the text was
trained: an answer that also occurs earlier (in a question) decodes the same when it is trained at the wrong
place. These tests compare character positions in the one official rendering.
"""

from __future__ import annotations

import pytest

from conftest import TOOL_RECORD, TOOLS, family_tokenizer
from llm_dojo.data.chat_format import resolve_chat_format
from llm_dojo.data.encode import encode_conversation
from llm_dojo.data.records import to_conversation
from llm_dojo.templates import get_template
from trained_spans import trained_char_spans

# The question ends with the answer: in templates that close user turns with the assistant terminator (ChatML,
# Llama-3, Gemma, Phi-3), "hello" + terminator occurs in the user turn before the real answer.
ECHO_TURNS = [{"role": "user", "content": "Reply with one word: hello"}, {"role": "assistant", "content": "hello"}]


def test_answer_that_ends_the_question_is_trained_after_the_assistant_header(smol_tokenizer):
    chat_format = resolve_chat_format(smol_tokenizer)
    text = smol_tokenizer.apply_chat_template(ECHO_TURNS, tokenize=False)
    sample = encode_conversation(ECHO_TURNS, smol_tokenizer, chat_format, 4096)
    header = "<|im_start|>assistant\n"
    start = text.rindex(header) + len(header)
    assert text.index("hello<|im_end|>") < start  # the decoy really is there, inside the user turn
    assert trained_char_spans(smol_tokenizer, text, sample) == [(start, start + len("hello<|im_end|>"))]
    assert text[start:] == "hello<|im_end|>\n"


@pytest.mark.parametrize("name", ["qwen2.5", "llama3", "gemma", "phi3"])
def test_answer_equal_to_the_end_of_a_question_is_trained_only_in_its_own_turn(name, smol_tokenizer):
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    messages = ECHO_TURNS + [{"role": "user", "content": "Again, one word: hello"},
                             {"role": "assistant", "content": "hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    sample = encode_conversation(messages, tokenizer, resolve_chat_format(tokenizer, name), 4096)
    target = "hello" + spec.terminator
    found, position = [], text.find(target)
    while position >= 0:
        found.append(position)
        position = text.find(target, position + 1)
    # Rendered order: question 1, answer 1, question 2, answer 2 — the answers are the 2nd and 4th occurrences.
    assert len(found) == 4, (name, text)
    expected = [(found[1], found[1] + len(target)), (found[3], found[3] + len(target))]
    assert trained_char_spans(tokenizer, text, sample) == expected



# The tool call as each official template writes it, after that template's assistant header (written out by hand).
TOOL_CALL_RENDERINGS = {
    "qwen2.5": ("<|im_start|>assistant\n",
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'),
    "qwen3": ("<|im_start|>assistant\n",
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'),
    "llama3.1": ("<|start_header_id|>assistant<|end_header_id|>\n\n",
                 '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'),
}


@pytest.mark.parametrize("name", sorted(TOOL_CALL_RENDERINGS))
def test_tool_call_turn_trains_exactly_the_rendered_call_and_its_terminator(name, smol_tokenizer):
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    conversation = to_conversation(TOOL_RECORD, "tools.jsonl:1")
    text = tokenizer.apply_chat_template(conversation.messages, tokenize=False, tools=TOOLS)
    sample = encode_conversation(conversation.messages, tokenizer, resolve_chat_format(tokenizer, name), 4096,
                                 tools=conversation.tools)
    header, call = TOOL_CALL_RENDERINGS[name]
    call_start = text.index(header + call) + len(header)
    answer = "It is 18 C and sunny in Paris." + spec.terminator
    answer_start = text.rindex(answer)
    spans = trained_char_spans(tokenizer, text, sample)
    assert [text[start:end] for start, end in spans] == [call, answer]
    assert spans == [(call_start, call_start + len(call)), (answer_start, answer_start + len(answer))]
