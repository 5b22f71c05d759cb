"""Samples → batches. Two ways, both keeping labels exactly as `encode` made them:

- packing (default): the samples of each batch are packed, best-fit decreasing, into rows of at most `max_len`
  tokens (`BatchPackingCollator`), so a batch is still `per_device_train_batch_size` *samples*, as without
  packing: packing changes the speed, not which samples an update sees. Each sample keeps its own
  `position_ids` starting at 0 and no attention mask is passed, so transformers builds a per-sample causal mask
  (SDPA) — no token attends across a sample boundary. The first token of every sample gets label -100, so the
  usual one-token label shift never asks a sample's last token to predict the next sample's first token.
- padding: samples of similar length grouped together, padded on the right to the longest in the batch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from llm_dojo.data.encode import IGNORE_INDEX, EncodedSample


def pack_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows whose total length is at most `capacity` (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    rows: list[list[int]] = []
    # (free space, row index) kept sorted so the tightest row that still fits is found by bisection.
    free: list[tuple[int, int]] = []
    for index in order:
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"sample {index} has {need} tokens, more than the row capacity {capacity}")
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (space - need, row))
        else:
            rows.append([index])
            bisect.insort(free, (capacity - need, len(rows) - 1))
    return rows


@dataclass
class PackedRow:
    """Several samples joined into one training row."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def token_ids(sample: EncodedSample | dict) -> list[int]:
    return sample["input_ids"] if isinstance(sample, dict) else sample.input_ids


def join_samples(samples: Sequence[EncodedSample | dict]) -> PackedRow:
    """One packed row: the samples end to end, positions restarting at 0, each first label masked."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for sample in samples:
        ids = token_ids(sample)
        sample_labels = sample["labels"] if isinstance(sample, dict) else sample.labels
        input_ids += ids
        labels += [IGNORE_INDEX] + sample_labels[1:]  # never predict across a sample boundary
        position_ids += list(range(len(ids)))
    return PackedRow(input_ids, labels, position_ids)


def pack_rows(samples: Sequence[EncodedSample | dict], capacity: int) -> list[PackedRow]:
    """The fewest rows of at most `capacity` tokens holding every sample (best-fit decreasing)."""
    groups = pack_best_fit_decreasing([len(token_ids(s)) for s in samples], capacity)
    return [join_samples([samples[index] for index in group]) for group in groups]


class PackedCollator:
    """Stack packed rows into a batch; rows of unequal length are padded with a separate dummy 'sample'.

    `flatten=True` joins the rows end to end into one row instead (nothing padded), with the sequence
    boundaries as `cu_seq_lens_q/k` and `max_length_q/k`. Flash-attention needs it: transformers reads packed
    samples from `position_ids` there only when the batch has one row; with several rows it would attend
    across samples. Its variable-length kernel costs the sum of the samples' squared lengths, not the row's,
    so one long row is free on a GPU. (SDPA on a CPU is the opposite: keep rows short, do not flatten.)
    """

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad_token_id = pad_token_id
        self.flatten = flatten

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.flatten:
            return self._flattened(rows)
        width = max(len(r["input_ids"]) for r in rows)
        input_ids, labels, position_ids = [], [], []
        for row in rows:
            pad = width - len(row["input_ids"])
            input_ids.append(row["input_ids"] + [self.pad_token_id] * pad)
            labels.append(row["labels"] + [IGNORE_INDEX] * pad)
            # Padding restarts its positions at 0 so it forms its own segment and is attended by no real token.
            position_ids.append(row["position_ids"] + list(range(pad)))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(position_ids, dtype=torch.long),
        }

    @staticmethod
    def _flattened(rows: list[dict]) -> dict[str, torch.Tensor]:
        position_ids = torch.tensor([p for row in rows for p in row["position_ids"]], dtype=torch.long)
        starts = (position_ids == 0).nonzero().flatten()
        cu_seq_lens = torch.cat([starts, torch.tensor([position_ids.numel()])]).to(torch.int32)
        longest = int(cu_seq_lens.diff().max())
        return {
            "input_ids": torch.tensor([[t for row in rows for t in row["input_ids"]]], dtype=torch.long),
            "labels": torch.tensor([[t for row in rows for t in row["labels"]]], dtype=torch.long),
            "position_ids": position_ids[None],
            "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest, "max_length_k": longest,
        }


class BatchPackingCollator:
    """A batch of samples → the fewest rows of at most `capacity` tokens (best-fit decreasing) → PackedCollator.

    Packing per batch keeps the meaning of the batch size (samples per update, as without packing) and needs no
    pass over the whole data set. Adds `row_lengths`, the real tokens of each row, which the token budget uses
    to cut the batch into micro-batches of whole rows (recipes/trainer.py).
    """

    def __init__(self, pad_token_id: int, capacity: int, flatten: bool = False):
        self.capacity = capacity
        self.flatten = flatten
        self.rows = PackedCollator(pad_token_id, flatten=flatten)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        rows = pack_rows(samples, self.capacity)
        batch = self.rows(rows_as_records(rows))
        batch["row_lengths"] = torch.tensor([len(row.input_ids) for row in rows])
        return batch


class PaddedCollator:
    """Right-pad samples to the longest in the batch; attention_mask marks real tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(s["input_ids"]) for s in samples)
        input_ids, labels, attention_mask = [], [], []
        for sample in samples:
            pad = width - len(sample["input_ids"])
            input_ids.append(sample["input_ids"] + [self.pad_token_id] * pad)
            labels.append(sample["labels"] + [IGNORE_INDEX] * pad)
            attention_mask.append([1] * len(sample["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        }


def rows_as_records(rows: Iterable[PackedRow]) -> list[dict]:
    """Packed rows as plain dicts (what a torch Dataset / the Trainer iterates over)."""
    return [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]


def samples_as_records(samples: Iterable[EncodedSample]) -> list[dict]:
    """Encoded samples as plain dicts for the padded path."""
    return [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]


# Batch entries that have one row per sample along dimension 0 and positions along dimension 1.
ROW_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")


def split_by_token_budget(batch: dict, row_lengths: list[int], budget: int) -> list[dict]:
    """Split a collated batch into micro-batches of whole rows holding at most `budget` real tokens each.

    Rows keep their order; a row longer than the budget forms a micro-batch of its own. Each micro-batch is cut
    to the width of its longest row: collators pad at the end of a row, so nothing real is cut. Batches that are
    one flattened row (the flash-attention collator's cu_seq_lens) are returned whole.
    """
    if "cu_seq_lens_q" in batch or len(row_lengths) <= 1:
        return [batch]
    groups: list[list[int]] = [[]]
    used = 0
    for index, length in enumerate(row_lengths):
        if groups[-1] and used + length > budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += length
    if len(groups) == 1:
        return [batch]
    micro_batches = []
    for group in groups:
        width = max(row_lengths[i] for i in group)
        rows = torch.tensor(group)
        micro_batches.append({key: value[rows, :width] if key in ROW_KEYS else value
                              for key, value in batch.items()})
    return micro_batches
