"""Per-sample attention for packed rows ("dojo_packed"): packed logits equal each sample run alone, on every tiny
architecture, including Gemma-2's soft-capping and sliding-window layers and a Mistral with a small window."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_ARCHS, tiny_config
from llm_dojo.attention import packed_attention, register, segments

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTHS = (20, 13, 31)  # longer than the small windows below, so the window matters
CASES = [(arch, None) for arch in TINY_ARCHS] + [("mistral", 8), ("gemma2", 8), ("qwen2", 8)]


def test_segments_start_where_positions_restart():
    assert segments(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])) == [(0, 3), (3, 5), (5, 9)]
    assert segments(torch.tensor([3, 4, 0, 1])) == [(0, 2), (2, 4)]  # a row that starts mid-sample


@pytest.mark.parametrize("arch, window", CASES)
def test_packed_logits_equal_each_sample_alone(arch, window):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, 49152)
    if window is not None:
        config.sliding_window = window
        if arch == "qwen2":
            config.use_sliding_window, config.max_window_layers = True, 0
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    samples = [torch.randint(0, 49152, (n,)) for n in LENGTHS]
    alone = [model(input_ids=s[None], use_cache=False).logits[0] for s in samples]
    model.set_attn_implementation(register())
    row = torch.cat(samples)[None]
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0]
    starts = [0, LENGTHS[0], LENGTHS[0] + LENGTHS[1]]
    error = max((packed[s:s + n] - a).abs().max().item() for s, n, a in zip(starts, LENGTHS, alone))
    assert error < 1e-4, error
    # and without the sample boundaries the same row gives other logits: the test can tell
    whole = model(input_ids=row, use_cache=False).logits[0]
    assert (whole[LENGTHS[0]:] - packed[LENGTHS[0]:]).abs().max().item() > 1e-2


def test_soft_capping_and_window_follow_the_eager_formula():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    out, _ = packed_attention(None, q, k, v, None, scaling=0.5, sliding_window=4, softcap=3.0,
                              position_ids=torch.arange(12)[None])
    scores = torch.tanh(q @ k.transpose(-1, -2) * 0.5 / 3.0) * 3.0
    i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
    scores = scores.masked_fill(~((j <= i) & (i - j < 4)), float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)


def test_training_uses_it_on_a_cpu_and_the_saved_model_does_not_name_it(tiny_model_dir, tmp_path, write_jsonl,
                                                                       monkeypatch):
    from llm_dojo.config import load_config
    from llm_dojo.recipes.sft import train, uses_packed_attention

    data = write_jsonl([{"instruction": "Hi", "output": "Hello"}] * 3)
    config = load_config(None, [f"model_name_or_path={tiny_model_dir('llama')}", f"train_data_path={data}",
                                f"output_dir={tmp_path / 'out'}", "train_mode=full", "max_steps=1",
                                "model_dtype=fp32", "disable_tqdm=true"])
    assert uses_packed_attention(config) is (not torch.cuda.is_available())
    import llm_dojo.attention as attention

    seen, real = [], attention.packed_attention

    def spy(*args, **kwargs):
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "packed_attention", spy)  # register() hands transformers this module's function
    train(config)
    assert bool(seen) is (not torch.cuda.is_available())
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved.get("_attn_implementation", saved.get("attn_implementation")) != "dojo_packed"
