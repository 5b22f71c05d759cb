"""An adapter stops exactly at the terminator it was trained on — in chat, generate, serve and after merge.

Three families whose end of turn is NOT simply the tokenizer's eos:
- phi3: eos `<|endoftext|>`, end of turn `<|end|>` (the Llama-3 situation, where the base tokenizer's eos is
  `<|end_of_text|>` and the turn ends with `<|eot_id|>`; Llama-3's own template is not used here because the
  SmolLM2 tokenizer these tiny models share splits its "\n\n" header differently before an answer than at the end
  of a prompt, which the real Llama-3 tokenizer does not);
- gemma2: eos `<eos>`, end of turn `<end_of_turn>`; trained through a `template_name` override (the tokenizer's own
  template is SmolLM2's ChatML), so inference must use the template saved with the adapter;
- glm4: no terminator after the last answer at all; the model stops by writing the next header `<|user|>`.

A tiny random model of each learns one answer with a LoRA adapter through `dojo train`; then every inference path
must produce exactly the answer's tokens followed by the trained terminator, and nothing after it.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import family_tokenizer, tiny_config
from llm_dojo.config import load_config
from llm_dojo.data.chat_format import CHAT_FORMAT_FILE, ChatFormat, resolve_chat_format
from llm_dojo.data.encode import encode_conversation
from llm_dojo.infer import chat, generate, merge
from llm_dojo.infer.common import load_from_args, render_prompt
from llm_dojo.recipes.sft import train
from llm_dojo.serve import cli as serve_cli
from llm_dojo.serve.app import create_app, serve_in_background
from llm_dojo.templates.registry import get_template, template_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION, ANSWER = "What is your name?", "I am Dojo."
MAX_NEW = 24  # far more than the answer: a run that does not stop shows it

# family -> (template name, architecture, tokenizer eos override, train with template_name instead of the tokenizer's)
FAMILIES = {
    "phi3": ("phi3", "llama", None, False),
    "gemma2": ("gemma2", "gemma2", None, True),
    "glm4": ("glm4", "qwen2", None, False),
}


def model_args(adapter: Path, **extra) -> argparse.Namespace:
    """The namespace chat/generate/serve build from `--adapter DIR` (base read from the adapter)."""
    values = dict(model=None, adapter=str(adapter), dtype="fp32", load_in_4bit=None, trust_remote_code=False)
    values.update(extra)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory, smol_tokenizer, one_torch_thread):
    """(family, adapter folder, the answer's token ids, the terminator's id) after a short `dojo train`."""
    family = request.param
    template, arch, eos_override, via_template_name = FAMILIES[family]
    spec = get_template(template)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    if eos_override:
        tokenizer.eos_token = eos_override
    if via_template_name:
        tokenizer.chat_template = smol_tokenizer.chat_template
    root = tmp_path_factory.mktemp(f"stop-{family}")
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
    with torch.no_grad():  # tied embeddings of std 0.02 cap every logit near 0: no adapter could fit an answer then
        model.get_input_embeddings().weight.normal_(0.0, 0.3)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    data = root / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": ANSWER}]}) + "\n")
    overrides = [f"model_name_or_path={root / 'base'}", f"train_data_path={data}", f"output_dir={root / 'adapter'}",
                 "lora_rank=16", "lora_alpha=32", "lora_dropout=0", "learning_rate=1e-2", "max_steps=60",
                 "per_device_train_batch_size=1", "logging_steps=10", "lr_scheduler_type=constant", "warmup_steps=0",
                 "model_dtype=fp32", "disable_tqdm=true"]
    if via_template_name:
        overrides.append(f"template_name={template}")
    summary = train(load_config(None, overrides))
    assert summary["log_history"][-2]["loss"] < 0.2, summary["log_history"]  # it learned the answer

    saved = ChatFormat.from_file(root / "adapter" / CHAT_FORMAT_FILE)
    # What the model learned to write after the prompt: the training rendering past the generation prompt (for GLM-4
    # that starts with the "\n" its template puts after <|assistant|>), ending with the trained terminator.
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    sample = encode_conversation(messages, tokenizer, saved, max_len=256)
    prompt = tokenizer(tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True,
                                                     chat_template=saved.chat_template),
                       add_special_tokens=False)["input_ids"]
    assert sample.input_ids[:len(prompt)] == prompt, "the generation prompt must be a token prefix of the training text"
    terminator_id = tokenizer.convert_tokens_to_ids(spec.terminator)
    rest = sample.input_ids[len(prompt):]
    continuation = rest[:rest.index(terminator_id) + 1]  # templates may write more after it (Phi-3's <|endoftext|>)
    trained = [label for label in sample.labels if label != -100]
    assert trained == continuation, "training must cover exactly what the model writes after the prompt"
    expected_text = tokenizer.decode(continuation[:-1], skip_special_tokens=True)
    assert expected_text.strip() == ANSWER
    return family, saved, root / "adapter", continuation, expected_text


def test_the_saved_chat_format_names_the_trained_terminator(trained):
    family, saved, _, _, _ = trained
    template, _, eos_override, _ = FAMILIES[family]
    spec = get_template(template)
    assert saved.name == template and saved.terminator == spec.terminator
    assert saved.stop_tokens[0] == spec.terminator  # the terminator first, then the tokenizer's eos
    assert saved.append_terminator_at_end is (family == "glm4")
    assert (eos_override or spec.eos_token) in saved.stop_tokens


def test_chat_stops_at_the_terminator(trained, capsys):
    _, _, adapter, continuation, expected_text = trained
    loaded = load_from_args(model_args(adapter))
    assert continuation[-1] in loaded.stop_ids
    prompt = chat.encode_chat(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                                    eos_token_id=loaded.stop_ids, pad_token_id=loaded.tokenizer.pad_token_id)
    assert out[0, len(prompt):].tolist() == continuation  # the answer, its terminator, nothing more
    assert chat.main(["--adapter", str(adapter), "--dtype", "fp32", "--prompt", QUESTION,
                      "--max-new-tokens", str(MAX_NEW)]) == 0
    assert capsys.readouterr().out == expected_text + "\n"


def test_generate_stops_at_the_terminator(trained, tmp_path):
    _, _, adapter, _, expected_text = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": QUESTION}) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": QUESTION}]}) + "\n")
    output = tmp_path / "answers.jsonl"
    assert generate.main(["--adapter", str(adapter), "--dtype", "fp32", "--input", str(prompts), "--output",
                          str(output), "--max-new-tokens", str(MAX_NEW)]) == 0
    assert [json.loads(line)["answer"] for line in output.read_text().splitlines()] == [expected_text] * 2


def test_serve_stops_at_the_terminator(trained):
    family, _, adapter, continuation, expected_text = trained
    args = serve_cli.build_parser().parse_args(["--adapter", str(adapter), "--dtype", "fp32"])
    engine = serve_cli.build_engine(args, family)
    try:
        with serve_in_background(create_app(engine)) as url:
            body = json.dumps({"model": family, "messages": [{"role": "user", "content": QUESTION}],
                               "max_tokens": MAX_NEW, "temperature": 0}).encode()
            request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        engine.close()
    assert reply["choices"][0]["message"]["content"] == expected_text
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == len(continuation)  # the terminator counts, nothing after it


def test_merged_model_stops_at_the_terminator_with_plain_transformers(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, saved, adapter, continuation, _ = trained
    folder = merge.merge_adapter(str(adapter), str(tmp_path / "merged"), dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == saved.chat_template  # the trained template travels with the merged model
    assert continuation[-1] in json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():  # no eos given: generation_config.json alone must stop it
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    assert out[0, ids.shape[1]:].tolist() == continuation


def test_the_template_name_override_is_used_at_inference(trained):
    family, saved, adapter, _, _ = trained
    if not FAMILIES[family][3]:
        pytest.skip("this family trains with the tokenizer's own template")
    loaded = load_from_args(model_args(adapter))
    prompt = render_prompt(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    assert prompt.startswith("<bos><start_of_turn>user\n") and "<|im_start|>" not in prompt


@pytest.mark.parametrize("name", template_names())
def test_every_registry_familys_terminator_is_a_stop_id(name, smol_tokenizer):
    spec = get_template(name)
    tokenizer = family_tokenizer(smol_tokenizer, spec)
    chat_format = resolve_chat_format(tokenizer, name)
    ids = chat_format.stop_token_ids(tokenizer)
    expected = {tokenizer.convert_tokens_to_ids(spec.terminator), tokenizer.convert_tokens_to_ids(spec.eos_token)}
    assert set(ids) == expected  # the terminator and eos — and no marker the template does not use


def test_a_folder_without_a_saved_format_resolves_the_same_rule(smol_tokenizer, tmp_path):
    from llm_dojo.data.chat_format import chat_format_for_inference

    resolved = chat_format_for_inference(smol_tokenizer, str(tmp_path))
    assert resolved == resolve_chat_format(smol_tokenizer, "auto")
    assert resolved.name == "smollm2" and resolved.stop_tokens == ("<|im_end|>",)
