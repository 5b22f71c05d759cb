"""Packing without cross-contamination, loss only at trained positions, and accumulation-equivalent normalisation."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import TINY_ARCHS, tiny_config
from llm_dojo.data.batching import (BatchPackingCollator, PackedCollator, PaddedCollator, pack_best_fit_decreasing,
                                    pack_rows, rows_as_records, samples_as_records)
from llm_dojo.data.encode import IGNORE_INDEX, EncodedSample
from llm_dojo.loss import full_logits_loss, trained_positions_loss

PACKED_LOGIT_TOLERANCE = 1e-4  # fp32: the per-sample mask changes only the order of floating-point reductions


def random_samples(n: int, vocab: int, seed: int = 0, lo: int = 5, hi: int = 40) -> list[EncodedSample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        samples.append(EncodedSample(ids, labels, f"s{i}"))
    return samples


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32,
                                                 attn_implementation="sdpa")
    return model.eval()


def test_best_fit_decreasing_respects_capacity_and_uses_every_sample_once():
    lengths = [random.Random(i).randint(1, 100) for i in range(200)]
    rows = pack_best_fit_decreasing(lengths, capacity=128)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    lower_bound = -(-sum(lengths) // 128)
    assert len(rows) <= lower_bound + 2  # BFD is near-optimal on this kind of input


def test_packed_rows_restart_positions_and_never_predict_across_a_boundary():
    samples = random_samples(10, 1000)
    rows = pack_rows(samples, capacity=64)
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        for start in starts:
            assert row.labels[start] == IGNORE_INDEX
        assert len(row.input_ids) <= 64
    assert sum(len(r.input_ids) for r in rows) == sum(len(s.input_ids) for s in samples)


def test_packed_logits_equal_each_sample_run_alone(tiny_llama):
    samples = random_samples(9, tiny_llama.config.vocab_size, seed=1)
    rows = rows_as_records(pack_rows(samples, capacity=96))
    batch = PackedCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape[0] > 1  # several rows, padded: the pad segment must not disturb anything
    with torch.no_grad():
        packed_logits = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                   use_cache=False).logits
    by_ids = {tuple(s.input_ids): s for s in samples}
    checked = 0
    for row_index, row in enumerate(rows):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for start, end in zip(starts, starts[1:]):
            ids = row["input_ids"][start:end]
            assert tuple(ids) in by_ids
            with torch.no_grad():
                alone = tiny_llama(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            error = (packed_logits[row_index, start:end] - alone).abs().max().item()
            assert error < PACKED_LOGIT_TOLERANCE, error
            checked += 1
    assert checked == len(samples)


def test_flattened_rows_for_flash_attention_keep_every_sample_apart(tiny_llama):
    samples = random_samples(9, tiny_llama.config.vocab_size, seed=2)
    rows = rows_as_records(pack_rows(samples, capacity=96))
    batch = PackedCollator(pad_token_id=0, flatten=True)(rows)
    total = sum(len(s.input_ids) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, total)
    assert batch["labels"][0].tolist() == [label for row in rows for label in row["labels"]]
    lengths = batch["cu_seq_lens_q"].diff().tolist()
    assert batch["cu_seq_lens_q"][0] == 0 and sorted(lengths) == sorted(len(s.input_ids) for s in samples)
    assert batch["max_length_q"] == max(lengths) and batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    # SDPA reads the same boundaries from position_ids: every sample's logits equal those run alone.
    with torch.no_grad():
        flat_logits = tiny_llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 use_cache=False).logits[0]
    bounds = batch["cu_seq_lens_q"].tolist()
    for start, end in zip(bounds, bounds[1:]):
        with torch.no_grad():
            alone = tiny_llama(input_ids=batch["input_ids"][:, start:end], use_cache=False).logits[0]
        assert (flat_logits[start:end] - alone).abs().max().item() < PACKED_LOGIT_TOLERANCE


def test_packed_loss_equals_mean_of_samples_run_alone(tiny_llama):
    samples = random_samples(7, tiny_llama.config.vocab_size, seed=2)
    packed = PackedCollator(0)(rows_as_records(pack_rows(samples, capacity=128)))
    with torch.no_grad():
        packed_loss, n = trained_positions_loss(tiny_llama, packed)
        total = 0.0
        count = 0
        for sample in samples:
            alone = PaddedCollator(0)(samples_as_records([sample]))
            loss, k = trained_positions_loss(tiny_llama, alone)
            total += loss.item() * k
            count += k
    assert n == count
    assert packed_loss.item() == pytest.approx(total / count, abs=1e-5)


@pytest.mark.parametrize("packing", [True, False])
def test_trained_positions_loss_equals_full_logits_loss(tiny_llama, packing):
    samples = random_samples(6, tiny_llama.config.vocab_size, seed=3)
    if packing:
        batch = PackedCollator(0)(rows_as_records(pack_rows(samples, capacity=80)))
    else:
        batch = PaddedCollator(0)(samples_as_records(samples))
    with torch.no_grad():
        ours, _ = trained_positions_loss(tiny_llama, batch)
        reference = full_logits_loss(tiny_llama, batch)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-5)


def test_logits_are_computed_only_at_trained_positions(tiny_llama):
    samples = random_samples(4, tiny_llama.config.vocab_size, seed=4)
    batch = PaddedCollator(0)(samples_as_records(samples))
    seen = {}

    def record_rows(module, inputs, output):
        seen["rows"] = output.shape[0]

    handle = tiny_llama.lm_head.register_forward_hook(record_rows)
    try:
        with torch.no_grad():
            _, trained = trained_positions_loss(tiny_llama, batch)
    finally:
        handle.remove()
    assert seen["rows"] == trained < batch["input_ids"].numel()


def one_sgd_step(model_dir: str, output_dir, records: list[dict], collator, batch_size: int,
                 accumulation: int) -> dict[str, torch.Tensor]:
    """Parameters after one SGD step of the real DojoTrainer over `records`, in order."""
    from transformers import AutoModelForCausalLM

    from llm_dojo.config import DojoTrainingArguments
    from llm_dojo.recipes.outputs import ListDataset
    from llm_dojo.recipes.trainer import DojoTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DojoTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", train_sampling_strategy="sequential", use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, remove_unused_columns=False,
    )
    trainer = DojoTrainer(model=model, args=args, train_dataset=ListDataset(records), data_collator=collator)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_gradient_accumulation_of_four_micro_batches_equals_one_batch_of_four(tiny_model_dir, tmp_path):
    """Through the real DojoTrainer: 4 micro-batches of 1 row == 1 batch of 4 rows (one SGD step)."""
    samples = random_samples(12, 1000, seed=5, lo=10, hi=60)
    rows = rows_as_records(pack_rows(samples, capacity=100))[:4]
    assert len(rows) == 4 and len({sum(l != IGNORE_INDEX for l in r["labels"]) for r in rows}) > 1

    together = one_sgd_step(tiny_model_dir("llama"), tmp_path / "run4", rows, PackedCollator(0), 4, 1)
    accumulated = one_sgd_step(tiny_model_dir("llama"), tmp_path / "run1", rows, PackedCollator(0), 1, 4)
    worst = max((together[k] - accumulated[k]).abs().max().item() for k in together)
    assert worst < 1e-6, worst


def test_flash_attention_configs_get_flattened_packed_batches(smol_tokenizer):
    from llm_dojo.config import load_config
    from llm_dojo.recipes.sft import make_collator

    def collator(*overrides):
        return make_collator(load_config(None, ["train_data_path=x.jsonl", *overrides]), smol_tokenizer)

    assert collator("attn_implementation=flash_attention_2").flatten is True
    assert collator("attn_implementation=kernels-community/vllm-flash-attn3").flatten is True
    assert collator("attn_implementation=sdpa").flatten is False
    assert collator().flatten is False  # transformers' default choice on the CPU is SDPA
    assert isinstance(collator("packing=false"), PaddedCollator)


# Samples whose FIRST label is trained: the packer, not the encoder, must mask it, or the previous sample's last
# token is asked to predict it. (Encoded chat samples always start untrained, which hides that mistake.)
FIRST_TOKEN_TRAINED = [
    EncodedSample([11, 12, 13, 14, 15, 16], [11, 12, 13, 14, 15, 16], "a"),
    EncodedSample([21, 22, 23, 24, 25], [21, IGNORE_INDEX, 23, 24, 25], "b"),
    EncodedSample([31, 32, 33, 34], [31, 32, 33, 34], "c"),
]


def test_packing_masks_the_first_label_of_every_sample_even_when_it_was_trained():
    rows = pack_rows(FIRST_TOKEN_TRAINED, capacity=16)
    assert len(rows) == 1  # best-fit decreasing: longest first
    row = rows[0]
    assert row.input_ids == [11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25, 31, 32, 33, 34]
    assert row.position_ids == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert row.labels == [IGNORE_INDEX, 12, 13, 14, 15, 16, IGNORE_INDEX, IGNORE_INDEX, 23, 24, 25,
                          IGNORE_INDEX, 32, 33, 34]


def test_packed_loss_equals_per_sample_loss_when_first_labels_are_trained(tiny_llama):
    packed = PackedCollator(0)(rows_as_records(pack_rows(FIRST_TOKEN_TRAINED, capacity=16)))
    with torch.no_grad():
        packed_loss, n = trained_positions_loss(tiny_llama, packed, num_items_in_batch=1)
        alone = [trained_positions_loss(tiny_llama, PaddedCollator(0)(samples_as_records([s])), num_items_in_batch=1)
                 for s in FIRST_TOKEN_TRAINED]
    # Alone, a sample's first token is predicted by nothing: 5 + 3 + 3 predictions, none across a boundary.
    assert n == sum(k for _, k in alone) == 11
    assert packed_loss.item() == pytest.approx(sum(loss.item() for loss, _ in alone), abs=1e-4)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_packed_logits_and_loss_equal_each_sample_alone_on_every_tiny_architecture(arch):
    """position_ids restarting at 0, no attention mask, no cache: transformers keeps samples apart.

    Each architecture runs with transformers' default attention here (SDPA; eager for Gemma-2, which has no SDPA).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(arch, vocab_size=512)
    config.pad_token_id = 0  # some families default to an id (Phi-3: 32000) outside this small vocabulary
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.config._attn_implementation == ("eager" if arch == "gemma2" else "sdpa")
    samples = random_samples(6, 512, seed=6, lo=8, hi=30)
    rows = rows_as_records(pack_rows(samples, capacity=64))
    batch = PackedCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape[0] > 1 and max(len(r["position_ids"]) for r in rows) > 30  # several samples a row
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        packed_loss, n = trained_positions_loss(model, batch, num_items_in_batch=1)
        alone_loss, alone_n = 0.0, 0
        for row_index, row in enumerate(rows):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
            for start, end in zip(starts, starts[1:]):
                ids = torch.tensor([row["input_ids"][start:end]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                error = (packed_logits[row_index, start:end] - alone).abs().max().item()
                assert error < PACKED_LOGIT_TOLERANCE, (arch, error)
                labels = torch.tensor([row["labels"][start:end]])
                loss, k = trained_positions_loss(model, {"input_ids": ids, "labels": labels}, num_items_in_batch=1)
                alone_loss += loss.item()
                alone_n += k
    assert n == alone_n
    assert packed_loss.item() == pytest.approx(alone_loss, rel=1e-5)


def test_padded_gradient_accumulation_of_two_micro_batches_equals_one_batch_of_both(tiny_llama):
    """packing: false — each micro-batch's summed loss over the window's trained-token count, gradients added."""
    samples = random_samples(4, tiny_llama.config.vocab_size, seed=7, lo=6, hi=40)
    halves = [samples[:2], samples[2:]]
    counts = [sum(s.num_trained - (s.labels[0] != IGNORE_INDEX) for s in half) for half in halves]
    assert counts[0] != counts[1]  # unequal: a mean of per-micro-batch means would give a different answer
    parameters = [p for p in tiny_llama.parameters()]

    def gradients(batches: list[list[EncodedSample]], num_items) -> list[torch.Tensor]:
        tiny_llama.zero_grad()
        for batch in batches:
            loss, _ = trained_positions_loss(tiny_llama, PaddedCollator(0)(samples_as_records(batch)), num_items)
            loss.backward()
        grads = [p.grad.detach().clone() for p in parameters]
        tiny_llama.zero_grad()
        return grads

    def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max((x - y).abs().max().item() for x, y in zip(a, b))

    together = gradients([samples], None)  # one padded batch, normalised by its own trained-token count
    accumulated = gradients(halves, sum(counts))
    assert worst(together, accumulated) < 1e-5  # fp32; gradients here are up to ~0.3 (measured: 1e-6 apart)
    naive = [g / 2 for g in gradients(halves[:1], None)]
    naive = [g + h / 2 for g, h in zip(naive, gradients(halves[1:], None))]
    assert worst(together, naive) > 1e-3  # the test tells the right normaliser from the naive one (~0.1)


def test_padded_trainer_two_micro_batches_of_two_equal_one_batch_of_four(tiny_model_dir, tmp_path):
    """packing: false through the real DojoTrainer: the Trainer's trained-token count matches our loss's."""
    samples = random_samples(4, 1000, seed=8, lo=10, hi=60)
    records = samples_as_records(samples)
    assert len({len(s.input_ids) for s in samples}) == 4  # every micro-batch is padded differently
    together = one_sgd_step(tiny_model_dir("llama"), tmp_path / "run4", records, PaddedCollator(0), 4, 1)
    accumulated = one_sgd_step(tiny_model_dir("llama"), tmp_path / "run2", records, PaddedCollator(0), 2, 2)
    worst = max((together[k] - accumulated[k]).abs().max().item() for k in together)
    assert worst < 1e-6, worst


def test_a_packed_batch_is_the_batch_of_samples_in_the_fewest_rows():
    from llm_dojo.recipes.trainer import CountingCollator

    samples = samples_as_records(random_samples(9, 1000, seed=4, lo=5, hi=60))
    batch = CountingCollator(BatchPackingCollator(0, capacity=64))(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert int(batch["num_samples"]) == 9  # the batch size counts samples, packed or not
    assert int(batch["num_real_tokens"]) == sum(lengths) == int(batch["row_lengths"].sum())
    assert batch["input_ids"].shape[0] == len(pack_best_fit_decreasing(lengths, 64)) < 9
    assert all(length <= 64 for length in batch["row_lengths"].tolist())
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE_INDEX).all()  # also the padding's own 'sample' start
    # Every sample's tokens and trained labels are there, whatever row they landed in.
    assert sorted(batch["input_ids"][batch["labels"] != IGNORE_INDEX].tolist()) == sorted(
        t for s in samples for t, label in zip(s["input_ids"][1:], s["labels"][1:]) if label != IGNORE_INDEX)


def test_packing_changes_the_speed_not_the_update(tiny_llama):
    """The gradient of a batch packed into rows equals the gradient of the same samples padded."""
    samples = samples_as_records(random_samples(8, tiny_llama.config.vocab_size, seed=5))

    def gradients(collator) -> list[torch.Tensor]:
        tiny_llama.zero_grad()
        batch = collator(samples)
        count = sum(int((torch.tensor(s["labels"][1:]) != IGNORE_INDEX).sum()) for s in samples)
        loss, trained = trained_positions_loss(tiny_llama, batch, num_items_in_batch=count)
        assert trained == count
        loss.backward()
        return [p.grad.clone() for p in tiny_llama.parameters()]

    packed, padded = gradients(BatchPackingCollator(0, capacity=96)), gradients(PaddedCollator(0))
    for a, b in zip(packed, padded):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
