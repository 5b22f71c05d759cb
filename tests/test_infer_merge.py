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

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "smollm2-135m-instruct"
TARGETS = ["q_proj", "v_proj", "down_proj"]
TIGHT, LOOSE = 1e-3, 1e-2


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

    torch.manual_seed(seed)  # A is drawn from the global generator
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, use_dora=use_dora, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.005)
    peft_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return peft_model.eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer, prompt_ids, one_torch_thread):
    """Three adapters and reference logits of base+adapter (unmerged), computed before any merge."""
    from peft import PeftModel

    root = tmp_path_factory.mktemp("adapters")
    reference = {}
    # QLoRA first: quantising the base to 4-bit is the slow part (~9 s on this CPU), so it happens once here.
    base_4bit = load_model(MODEL, dtype=torch.float32, load_in_4bit=True)
    peft_model = make_adapter(base_4bit, root / "qlora", tokenizer, seed=3)
    (root / "qlora" / "dojo_config.yaml").write_text("train_mode: qlora\nlora_rank: 8\n")  # as `dojo train` writes
    # What training saw: the 4-bit base + adapter. This forward may repack the 4-bit weights in place (CPUs with
    # AVX-512 BF16), after which they can no longer be de-quantised: the merge below must not depend on them.
    with merge.training_path_4bit(peft_model):  # the 4-bit matmul training used (see training_path_4bit)
        reference["qlora"] = logits(peft_model, prompt_ids)
    logits(peft_model, prompt_ids)  # and an eval-mode forward: on AVX-512 BF16 CPUs it repacks the weights
    del peft_model, base_4bit
    # The de-quantised reference is made the safe way: a fresh 4-bit load, de-quantised before any forward.
    fresh_4bit = load_model(MODEL, dtype=torch.float32, load_in_4bit=True)
    merge.check_not_repacked(fresh_4bit)
    dequantised = fresh_4bit.dequantize(dtype=torch.float32)
    reference["qlora_dequantised"] = logits(PeftModel.from_pretrained(dequantised, root / "qlora"), prompt_ids)
    del fresh_4bit, dequantised

    base = load_model(MODEL, dtype=torch.float32)
    reference["base"] = logits(base, prompt_ids)
    on_full_precision = PeftModel.from_pretrained(base, root / "qlora")
    reference["qlora_on_full_precision"] = logits(on_full_precision, prompt_ids)
    base = on_full_precision.unload()
    for kind, use_dora in (("lora", False), ("dora", True)):
        peft_model = make_adapter(base, root / kind, tokenizer, use_dora=use_dora, seed=len(kind))
        reference[kind] = logits(peft_model, prompt_ids)
        base = peft_model.unload()  # take the adapter layers out again for the next one
    return root, reference


@pytest.fixture(scope="module")
def merged_lora(adapters, tmp_path_factory) -> Path:
    """The LoRA adapter merged by the command line, in shards of at most 200 MB."""
    root, _ = adapters
    output = tmp_path_factory.mktemp("merged") / "lora"
    assert merge.main(["--adapter", str(root / "lora"), "--output", str(output), "--dtype", "fp32",
                       "--max-shard-size", "200MB"]) == 0
    return output


def load_merged(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.slow
def test_merged_lora_logits_equal_base_plus_adapter(adapters, merged_lora, prompt_ids):
    _, reference = adapters
    merged = logits(load_merged(merged_lora), prompt_ids)
    assert (reference["lora"] - reference["base"]).abs().max() > 0.1, "the adapter must change the model"
    assert (merged - reference["lora"]).abs().max() < TIGHT
    provenance = json.loads((merged_lora / "dojo_merge.json").read_text())
    assert provenance["qlora"] is False and provenance["dtype"] == "float32"


@pytest.mark.slow
def test_merged_dora_logits_equal_base_plus_adapter(adapters, prompt_ids, tmp_path):
    root, reference = adapters
    output = merge.merge_adapter(str(root / "dora"), str(tmp_path / "merged"), dtype="fp32")
    merged = logits(load_merged(output), prompt_ids)
    assert (reference["dora"] - reference["base"]).abs().max() > 0.1, "the adapter must change the model"
    assert (merged - reference["dora"]).abs().max() < TIGHT


@pytest.mark.slow
def test_qlora_merges_into_the_dequantised_base(adapters, prompt_ids, tmp_path):
    """The fixture ran a forward on the 4-bit model first (the case that broke merges on AVX-512 BF16 CPUs)."""
    root, reference = adapters
    output = merge.merge_adapter(str(root / "qlora"), str(tmp_path / "merged"), dtype="fp32")
    provenance = json.loads((output / "dojo_merge.json").read_text())
    assert provenance["qlora"] is True  # found via dojo_config.yaml
    assert provenance["checks"]["vs_4bit_base_plus_adapter"] <= merge.QLORA_CHECK_BOUND[torch.float32]
    merged = logits(load_merged(output), prompt_ids)
    assert (merged - reference["qlora_dequantised"]).abs().max() < TIGHT
    error = (merged - reference["qlora"]).abs().max()
    assert error < LOOSE
    # Why it matters: the same adapter on the original full-precision weights is much further from what training saw.
    assert (reference["qlora_on_full_precision"] - reference["qlora"]).abs().max() > 10 * error


@pytest.mark.slow
def test_merged_folder_stands_alone_and_stops_at_end_of_turn(adapters, merged_lora, prompt_ids):
    root, _ = adapters
    assert len(list(merged_lora.glob("model-*.safetensors"))) > 1, "max_shard_size should split the weights"
    assert 2 in json.loads((merged_lora / "generation_config.json").read_text())["eos_token_id"]

    model, tokenizer = load_merged(merged_lora), load_tokenizer(str(merged_lora))
    assert tokenizer.chat_template == load_tokenizer(str(root / "lora")).chat_template
    with torch.no_grad():  # no eos given here: generation_config.json alone must stop it
        generated = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=40,
                                   do_sample=False)[0, prompt_ids.shape[1]:].tolist()
    assert generated[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(generated) < 40


@pytest.mark.slow
def test_failed_merge_leaves_no_folder(adapters, tmp_path, monkeypatch):
    root, _ = adapters

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device (simulated)")

    # Fails after the weight shards and tokenizer were written into the temporary folder.
    monkeypatch.setattr(merge.ChatFormat, "save", disk_full)
    with pytest.raises(OSError, match="simulated"):
        merge.merge_adapter(str(root / "lora"), str(tmp_path / "out" / "merged"), dtype="fp32")
    assert list((tmp_path / "out").iterdir()) == []


def test_repacked_4bit_weights_are_refused():
    """A weight that a forward repacked for the CPU (quant_state.packing_format_for_cpu) must never be de-quantised."""
    from types import SimpleNamespace

    layer = torch.nn.Linear(2, 2)
    layer.weight.quant_state = SimpleNamespace(packing_format_for_cpu=False)
    model = torch.nn.Sequential(layer)
    merge.check_not_repacked(model)  # fresh: fine
    layer.weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(merge.MergeCheckError, match="repacked"):
        merge.check_not_repacked(model)


@pytest.mark.slow
def test_a_merge_that_does_not_reproduce_base_plus_adapter_fails_and_writes_nothing(adapters, tmp_path, monkeypatch):
    root, _ = adapters
    from peft.tuners.lora import LoraModel

    original = LoraModel.merge_and_unload

    def broken_merge(self, *args, **kwargs):  # a merge that silently damages one weight, like a garbage de-quantisation
        model = original(self, *args, **kwargs)
        weight = model.model.layers[0].self_attn.q_proj.weight
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", broken_merge)
    with pytest.raises(merge.MergeCheckError, match="nothing was written"):
        merge.merge_adapter(str(root / "lora"), str(tmp_path / "out" / "merged"), dtype="fp32")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_existing_output_is_not_overwritten_by_default(tmp_path, capsys):
    (tmp_path / "merged").mkdir()
    assert merge.main(["--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("files, expected", [
    ({"dojo_config.yaml": "train_mode: qlora\n"}, "train_mode: qlora"),
    ({"dojo_config.yaml": "train_mode: lora\n"}, None),
    ({"training_config.json": '{"model": {"load_in_4bit": true}}'}, "load_in_4bit: true"),
    ({}, None),
])
def test_qlora_adapters_are_recognised_from_the_training_config(tmp_path, files, expected):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "adapter").mkdir()
    for name, text in files.items():
        (tmp_path / "adapter" / name).write_text(text)
    evidence = merge.qlora_evidence(str(tmp_path / "adapter"), str(tmp_path / "base"))
    assert evidence == expected if expected is None else expected in evidence


def test_a_base_stored_in_4bit_marks_a_qlora_adapter(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"load_in_4bit": true, "quant_method": "bitsandbytes"}}')
    assert "stored in 4-bit" in merge.qlora_evidence(str(tmp_path), str(tmp_path))
