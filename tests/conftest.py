"""Shared fixtures: the embedded tokenizer, tiny random-weight models per architecture, small data files."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

# Keep the two cores for the tests themselves; tokenizers' thread pool only adds contention here.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def encoded_data_cache(tmp_path_factory):
    """Encoded data is cached in a folder of this test session, not in the user's ~/.cache (subprocesses too)."""
    previous = os.environ.get("DOJO_CACHE_DIR")
    os.environ["DOJO_CACHE_DIR"] = str(tmp_path_factory.mktemp("encoded"))
    yield
    if previous is None:
        os.environ.pop("DOJO_CACHE_DIR", None)
    else:
        os.environ["DOJO_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine, 2 threads that wait on each other run several
    times slower (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def embedded_path() -> str:
    from llm_dojo.models.embedded import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_path):
    from llm_dojo.models.loading import load_tokenizer

    return load_tokenizer(embedded_path)


def family_tokenizer(base_tokenizer, spec):
    """A copy of the SmolLM2 tokenizer that knows a family's special tokens and uses its official template."""
    tokenizer = copy.deepcopy(base_tokenizer)
    specials = [t for t in list(spec.special_tokens) + [spec.bos_token, spec.eos_token, spec.terminator] if t]
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(set(specials))})
    for key, value in spec.special_tokens_map().items():
        setattr(tokenizer, key, value)
    tokenizer.chat_template = spec.chat_template
    return tokenizer


TINY_ARCHS = ["qwen2", "qwen3", "llama", "gemma", "gemma2", "phi3", "mistral"]


def tiny_config(arch: str, vocab_size: int):
    """A 2-layer, 64-wide config of the given architecture (random weights; shapes like the real family)."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True)
    if arch in ("gemma", "gemma2", "qwen3"):
        common["head_dim"] = 16
    if arch == "phi3":
        common.pop("tie_word_embeddings")
    return AutoConfig.for_model(arch, **common)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """Factory: a saved tiny random model of `arch` with the SmolLM2 tokenizer (so our loaders read a real folder)."""
    cache: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in cache:
            from transformers import AutoModelForCausalLM

            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(arch, len(smol_tokenizer)))
            folder = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(folder)
            smol_tokenizer.save_pretrained(folder)
            cache[arch] = str(folder)
        return cache[arch]

    return make


@pytest.fixture
def write_jsonl(tmp_path):
    """Write records (dicts or raw strings) as a jsonl file and return its path."""

    def write(records, name: str = "data.jsonl") -> str:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    return write


CHAT_RECORDS = [
    {"instruction": "What is your name?", "output": "I am Dojo."},
    {"instruction": "Say hello.", "output": "Hello there!"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                  {"role": "assistant", "content": "6"}]},
    {"conversations": [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]},
]

# A tool-calling conversation in OpenAI's format (label tests of several files use it).
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}]
TOOL_RECORD = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"type": "function",
                                              "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 C, sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny in Paris."},
    ],
}
