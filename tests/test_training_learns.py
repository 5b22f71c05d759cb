"""Training really learns: a tiny model fits a small repeated set, and only the adapter moves.

`test_train.py` runs one step per tiny architecture and checks that the loss is a number; a loop that never
updates the adapter, or updates the frozen base instead, would pass it. Here the loss must fall clearly.
"""

from __future__ import annotations

import re

import pytest
import torch

from conftest import tiny_config
from llm_dojo.config import load_config
from llm_dojo.recipes.sft import train

# With the usual init (std 0.02) the frozen, tied embeddings of a 64-wide model give logits of at most ~1.3, so
# no adapter can halve a loss of ~11 (measured: 10.9 -> 9.6 in 20 steps). std 0.3 makes the frozen output head
# expressive enough that a working LoRA drives the loss near 0 (measured: 13.0 -> 0.5 in 8 steps).
INIT_STD = 0.3
RECORDS = [{"instruction": "What is your name?", "output": "I am Dojo, a small model."},
           {"instruction": "Say hello.", "output": "Hello there!"}] * 4


@pytest.fixture(scope="module")
def expressive_tiny_llama(tmp_path_factory, smol_tokenizer) -> str:
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", len(smol_tokenizer))
    config.initializer_range = INIT_STD
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama-init03")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return str(folder)


def base_name(name: str) -> str:
    """A parameter's name in the plain model: without PEFT's wrapper prefix and the adapters' base-layer segment."""
    return re.sub(r"\.(base_layer|base)(?=\.)", "", name.removeprefix("base_model.model."))


@pytest.mark.parametrize("trick_impl", ["peft", "dojo"])
def test_lora_training_halves_the_loss_on_a_repeated_set_and_changes_only_the_adapter(
        trick_impl, tmp_path, write_jsonl, expressive_tiny_llama):
    from transformers import AutoModelForCausalLM

    settings = {"train_data_path": write_jsonl(RECORDS), "output_dir": str(tmp_path / "out"),
                "model_name_or_path": expressive_tiny_llama, "trick_impl": trick_impl, "max_steps": 8,
                "learning_rate": 1e-2, "logging_steps": 1, "per_device_train_batch_size": 1, "seed": 0,
                "lora_dropout": 0.0, "warmup_steps": 0, "lr_scheduler_type": "constant", "max_len": 256}
    summary, model = train(load_config(None, [f"{k}={v}" for k, v in settings.items()]), return_model=True)
    losses = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses

    original = AutoModelForCausalLM.from_pretrained(expressive_tiny_llama, dtype=torch.float32).state_dict()
    adapter, frozen = {}, {}
    for name, parameter in model.named_parameters():
        (adapter if parameter.requires_grad else frozen)[name] = parameter.detach()
    assert adapter and all("lora_" in name for name in adapter), sorted(adapter)[:5]
    assert all(value.abs().max() > 0 for name, value in adapter.items() if "lora_B" in name)  # B starts at 0
    assert {base_name(name) for name in frozen} == set(original) - {"lm_head.weight"}  # tied to the embeddings
    changed = [name for name, value in frozen.items() if not torch.equal(value, original[base_name(name)])]
    assert changed == []
