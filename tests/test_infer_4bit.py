"""Chat, generate and serve load the base the way the adapter was trained: 4-bit for a QLoRA adapter, unless told."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from llm_dojo.infer.common import add_model_arguments, decide_4bit, load_from_args


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def qlora_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter trained (here: made) on the 4-bit tiny base, with the config `dojo train` writes."""
    from peft import LoraConfig, get_peft_model

    from llm_dojo.models.loading import load_model, load_tokenizer

    base = tiny_model_dir("llama")
    folder = tmp_path_factory.mktemp("qlora-adapter")
    model = load_model(base, load_in_4bit=True, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    (folder / "dojo_config.yaml").write_text("train_mode: qlora\nlora_rank: 4\n")
    return base, folder


def count_4bit_layers(model) -> int:
    return sum(type(m).__name__ == "Linear4bit" for m in model.modules())


def test_a_qlora_adapter_loads_on_a_4bit_base_by_default(qlora_adapter, caplog):
    _, folder = qlora_adapter
    with caplog.at_level(logging.INFO, logger="llm_dojo.infer.common"):
        loaded = load_from_args(parse(["--adapter", str(folder), "--dtype", "fp32"]))
    assert loaded.load_in_4bit and count_4bit_layers(loaded.model) > 0
    assert "loading the base in 4-bit NF4, as the adapter was trained" in caplog.text  # says which it did


def test_no_load_in_4bit_overrides_with_a_warning(qlora_adapter, caplog):
    _, folder = qlora_adapter
    with caplog.at_level(logging.INFO, logger="llm_dojo.infer.common"):
        loaded = load_from_args(parse(["--adapter", str(folder), "--dtype", "fp32", "--no-load-in-4bit"]))
    assert not loaded.load_in_4bit and count_4bit_layers(loaded.model) == 0
    assert "trained on a 4-bit base" in caplog.text


@pytest.mark.parametrize("requested, config, expected", [
    (None, "train_mode: qlora\n", True),
    (None, "train_mode: lora\n", False),
    (None, None, False),
    (True, "train_mode: lora\n", True),
    (False, "train_mode: qlora\n", False),
])
def test_decide_4bit(tmp_path, requested, config, expected):
    if config is not None:
        (tmp_path / "dojo_config.yaml").write_text(config)
    assert decide_4bit(requested, str(tmp_path)) is expected
