"""NEFTune: noise of size alpha/sqrt(L·d) with L each sample's own length (also in packed rows), off in eval."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.neftune import neftune_post_forward_hook

from llm_tricks.neftune import attach_neftune, per_token_sample_lengths

D = 64
ALPHA = 5.0


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=D, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def embedding_noise(model, **call) -> torch.Tensor:
    """The noise added to the embeddings during one training forward: noisy embeddings minus clean ones."""
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        model.train()
        model(**call, use_cache=False)
    finally:
        hook.remove()
    clean = model.get_input_embeddings().eval()(call["input_ids"]).detach()  # eval: no noise
    return seen[0] - clean


def test_lengths_come_from_position_ids_in_a_packed_row_and_from_the_mask_when_padded():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert per_token_sample_lengths((1, 9), position_ids=packed).tolist() == [[3, 3, 3, 2, 2, 4, 4, 4, 4]]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert per_token_sample_lengths((2, 4), attention_mask=mask).tolist() == [[4, 4, 4, 4], [2, 2, 0, 0]]
    assert per_token_sample_lengths((2, 3)).tolist() == [[3, 3, 3], [3, 3, 3]]
    with pytest.raises(ValueError, match="position_ids"):
        per_token_sample_lengths((1, 4), position_ids=packed)


def test_each_packed_sample_gets_noise_scaled_by_its_own_length():
    model = tiny_llama()
    handle = attach_neftune(model, ALPHA)
    lengths = [3, 40, 9]
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    ids = torch.randint(0, 96, position_ids.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1234)
    noise = embedding_noise(model, input_ids=ids, position_ids=position_ids)[0]
    start = 0
    for n in lengths:
        bound = ALPHA / math.sqrt(n * D)
        chunk = noise[start:start + n].abs()
        assert chunk.max() <= bound * (1 + 1e-5), n
        assert chunk.max() > 0.97 * bound, n  # uniform on [-bound, bound]: the largest of n·64 draws is near it
        assert abs(chunk.mean().item() / bound - 0.5) < 0.1, n  # E|U(-b, b)| = b/2
        start += n
    # transformers' built-in would have used the packed row length (52) for all three samples.
    assert noise[:3].abs().max() > 2 * ALPHA / math.sqrt(52 * D)
    handle.remove()


def test_padding_gets_no_noise_and_short_rows_use_their_true_length():
    model = tiny_llama()
    attach_neftune(model, ALPHA)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 4:] = 0
    torch.manual_seed(0)
    noise = embedding_noise(model, input_ids=ids, attention_mask=mask)
    assert noise[0].abs().max() <= ALPHA / math.sqrt(12 * D) * (1 + 1e-5)
    assert noise[1, :4].abs().max() > ALPHA / math.sqrt(12 * D)  # stronger than the padded length would give
    assert noise[1, :4].abs().max() <= ALPHA / math.sqrt(4 * D) * (1 + 1e-5)
    assert torch.count_nonzero(noise[1, 4:]) == 0


def test_single_unpadded_row_matches_transformers_builtin_noise():
    model = tiny_llama()
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(0))
    handle = attach_neftune(model, ALPHA)
    torch.manual_seed(7)
    ours = embedding_noise(model, input_ids=ids)
    handle.remove()

    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = ALPHA
    builtin = embeddings.register_forward_hook(neftune_post_forward_hook)
    torch.manual_seed(7)
    theirs = embedding_noise(model, input_ids=ids)
    builtin.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_noise_is_off_in_eval_mode_and_after_remove():
    model = tiny_llama()
    ids = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model.eval()(ids).logits
        handle = attach_neftune(model, ALPHA)
        torch.testing.assert_close(model.eval()(ids).logits, clean, atol=0, rtol=0)
        assert (model.train()(ids, use_cache=False).logits - clean).abs().max() > 1e-3
        handle.remove()
        torch.testing.assert_close(model.train()(ids, use_cache=False).logits, clean, atol=1e-6, rtol=0)
