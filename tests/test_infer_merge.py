"""`dojo merge`: merged weights reproduce base+adapter for LoRA, DoRA and QLoRA; the folder stands alone; atomicity.

Tolerances (max absolute logit difference, fp32 on CPU, logits of magnitude ~20):
  LoRA, DoRA: merged vs base+adapter < 1e-3 (measured ~1e-4: W·x + B·A·x vs (W + B·A)·x only reorders sums).
  QLoRA:      merged vs de-quantised base + adapter < 1e-3 (the same weights, merged or not);
              merged vs the 4-bit base + adapter used in training < 1e-2 (bitsandbytes de-quantises inside its
              kernel; on this CPU it matches to ~2e-4, the looser bound leaves room for its compute path).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_dojo.infer import merge
from llm_dojo.models.loading import load_model, load_tokenizer

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "v_proj", "down_proj"]
TIGHT, LOOSE = 1e-3, 1e-2


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads that wait on each other run several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def make_adapter(base, folder: Path, tokenizer, *, use_dora: bool = False, seed: int = 0):
    """A LoRA/DoRA adapter with small random (non-zero) B matrices, saved like `dojo train` does; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, use_dora=use_dora, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return peft_model.eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer, prompt_ids):
    """Three adapters and the logits of base+adapter for each (computed before any merge)."""
    root = tmp_path_factory.mktemp("adapters")
    reference = {}
    base = load_model(MODEL, dtype=torch.float32)
    reference["base"] = logits(base, prompt_ids)
    for kind, use_dora in (("lora", False), ("dora", True)):
        peft_model = make_adapter(base, root / kind, tokenizer, use_dora=use_dora, seed=len(kind))
        reference[kind] = logits(peft_model, prompt_ids)
        base = peft_model.unload()  # take the adapter layers out again for the next one
    del base
    base_4bit = load_model(MODEL, dtype=torch.float32, load_in_4bit=True)
    peft_model = make_adapter(base_4bit, root / "qlora", tokenizer, seed=3)
    (root / "qlora" / "training_config.json").write_text(json.dumps({"model": {"load_in_4bit": True}}))
    reference["qlora"] = logits(peft_model, prompt_ids)
    del peft_model, base_4bit
    return root, reference


def load_merged(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merged_logits_equal_base_plus_adapter(adapters, prompt_ids, tmp_path, kind):
    root, reference = adapters
    assert merge.main(["--adapter", str(root / kind), "--output", str(tmp_path / "merged"), "--dtype", "fp32"]) == 0
    merged = logits(load_merged(tmp_path / "merged"), prompt_ids)
    assert (reference[kind] - reference["base"]).abs().max() > 0.1, "the adapter must change the model"
    assert (merged - reference[kind]).abs().max() < TIGHT
    provenance = json.loads((tmp_path / "merged" / "dojo_merge.json").read_text())
    assert provenance["qlora"] is False and provenance["dtype"] == "float32"


def test_qlora_merges_into_the_dequantised_base(adapters, prompt_ids, tmp_path):
    from peft import PeftModel

    root, reference = adapters
    output = merge.merge_adapter(str(root / "qlora"), str(tmp_path / "merged"), dtype="fp32")
    assert json.loads((output / "dojo_merge.json").read_text())["qlora"] is True  # found via training_config.json
    merged = logits(load_merged(output), prompt_ids)

    dequantised = merge.load_base_for_merge(MODEL, torch.float32, qlora=True)
    assert (merged - logits(PeftModel.from_pretrained(dequantised, root / "qlora"), prompt_ids)).abs().max() < TIGHT
    assert (merged - reference["qlora"]).abs().max() < LOOSE

    # Why it matters: the same adapter added to the original full-precision weights is much further off.
    full_precision = merge.load_base_for_merge(MODEL, torch.float32, qlora=False)
    wrong = logits(PeftModel.from_pretrained(full_precision, root / "qlora").merge_and_unload(), prompt_ids)
    assert (wrong - reference["qlora"]).abs().max() > 10 * (merged - reference["qlora"]).abs().max()


def test_merged_folder_stands_alone_and_stops_at_end_of_turn(adapters, prompt_ids, tmp_path):
    root, _ = adapters
    output = merge.merge_adapter(str(root / "lora"), str(tmp_path / "merged"), dtype="fp32", max_shard_size="200MB")
    assert len(list(output.glob("model-*.safetensors"))) > 1, "max_shard_size should split the weights"
    assert (output / "chat_template.jinja").is_file() or "chat_template" in (output / "tokenizer_config.json").read_text()
    assert 2 in json.loads((output / "generation_config.json").read_text())["eos_token_id"]

    model, tokenizer = load_merged(output), load_tokenizer(str(output))
    assert tokenizer.chat_template == load_tokenizer(str(root / "lora")).chat_template
    with torch.no_grad():
        generated = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=40,
                                   do_sample=False)[0, prompt_ids.shape[1]:].tolist()
    assert generated[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(generated) < 40


def test_failed_merge_leaves_no_folder(adapters, tmp_path, monkeypatch):
    root, _ = adapters

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device (simulated)")

    # Fails after the weight shards and tokenizer were written into the temporary folder.
    monkeypatch.setattr(merge, "merged_generation_config", disk_full)
    with pytest.raises(OSError, match="simulated"):
        merge.merge_adapter(str(root / "lora"), str(tmp_path / "out" / "merged"), dtype="fp32")
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_output_is_not_overwritten_by_default(adapters, tmp_path, capsys):
    root, _ = adapters
    (tmp_path / "merged").mkdir()
    assert merge.main(["--adapter", str(root / "lora"), "--output", str(tmp_path / "merged")]) == 2
    assert "--overwrite" in capsys.readouterr().err
