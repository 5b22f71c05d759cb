"""inject_adapters / merge_adapters / save_as_peft_adapter: what we train loads in plain PEFT and transformers."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from llm_tricks.dora import DoRALinear
from llm_tricks.inject import adapter_layers, inject_adapters, merge_adapters, save_as_peft_adapter
from llm_tricks.lora import LoRALinear

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def trained_looking(model, use_dora: bool) -> None:
    """Give every adapter non-trivial weights, as if it had been trained."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(std=0.2, generator=gen)
            if use_dora:
                layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=gen))


IDS = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(3))


def test_inject_replaces_targets_and_freezes_everything_else():
    model = tiny_llama()
    names = inject_adapters(model, TARGETS, r=4, lora_alpha=8)
    assert names == [f"model.layers.{i}.{part}" for i in range(2)
                     for part in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.{p}" for n in names for p in ("lora_A", "lora_B"))
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    with torch.no_grad():  # B = 0: the injected model starts exactly as the base model
        torch.testing.assert_close(model(IDS).logits, tiny_llama()(IDS).logits, atol=0, rtol=0)


def test_inject_explains_an_unknown_target():
    with pytest.raises(ValueError, match="linear layers in this model: .*q_proj"):
        inject_adapters(tiny_llama(), ["qkv"], r=4, lora_alpha=8)


@pytest.mark.parametrize("use_dora,use_rslora", [(False, False), (False, True), (True, False)])
def test_saved_adapter_loads_in_plain_peft_with_the_same_logits(tmp_path, use_dora, use_rslora):
    tiny_llama().save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    inject_adapters(model, TARGETS, r=4, lora_alpha=8, lora_dropout=0.05, use_dora=use_dora, use_rslora=use_rslora)
    trained_looking(model, use_dora)
    save_as_peft_adapter(model, str(tmp_path / "adapter"), str(tmp_path / "base"), r=4, lora_alpha=8,
                         lora_dropout=0.05, use_dora=use_dora, use_rslora=use_rslora, target_modules=TARGETS)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    assert peft_model.peft_config["default"].use_dora == use_dora
    with torch.no_grad():
        ours, theirs = model(IDS).logits, peft_model(IDS).logits
    assert (ours - model.__class__.from_pretrained(tmp_path / "base").eval()(IDS).logits).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_saving_into_an_existing_folder_keeps_other_files(tmp_path):
    model = tiny_llama()
    inject_adapters(model, ["q_proj"], r=2, lora_alpha=4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "tokenizer_config.json").write_text("{}")
    save_as_peft_adapter(model, str(out), None, r=2, lora_alpha=4, lora_dropout=0.0, use_dora=False,
                         use_rslora=False, target_modules=["q_proj"])
    assert (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-adapter-")]


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_model_saves_and_loads_in_plain_transformers(tmp_path, use_dora):
    model = tiny_llama()
    inject_adapters(model, TARGETS, r=4, lora_alpha=8, use_dora=use_dora)
    trained_looking(model, use_dora)
    with torch.no_grad():
        expected = model(IDS).logits
    merge_adapters(model)
    assert not adapter_layers(model)
    assert not any(isinstance(m, (LoRALinear, DoRALinear)) for m in model.modules())
    model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_dora_adapter_on_the_embedded_model_loads_in_peft(tmp_path):
    from llm_dojo.models.embedded import embedded_model_path
    from llm_dojo.models.loading import find_linear_targets, load_model

    path = embedded_model_path()
    model = load_model(path, dtype=torch.float32).eval()
    targets = find_linear_targets(model)
    inject_adapters(model, targets, r=8, lora_alpha=16, use_dora=True)
    trained_looking(model, use_dora=True)
    save_as_peft_adapter(model, str(tmp_path / "adapter"), path, r=8, lora_alpha=16, lora_dropout=0.0,
                         use_dora=True, use_rslora=False, target_modules=targets)
    peft_model = PeftModel.from_pretrained(load_model(path, dtype=torch.float32), str(tmp_path / "adapter")).eval()
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, peft_model(ids).logits, atol=1e-3, rtol=0)
