"""Preference examples → batches, packed like SFT, with each sample's tokens tagged by the sample they belong to.

A preference loss compares whole sequences (the chosen answer's log-probability against the rejected one's), so
the batch must let the loss add up log-probabilities per sample. Every sample of a batch gets an id:
- pairs (dpo, simpo, orpo): pair i's chosen is sample 2i, its rejected 2i + 1;
- kto: example i is sample i, its mismatched KL sample (prompt i with the next example's answer) is sample n + i.
`sample_index` (batch, seq) holds that id at every token (-1 on padding), so the loss sums the per-token
log-probabilities of each sample with one index_add.

A *unit* is what must stay in one forward pass: a pair (its loss needs both sides), or a KTO example with its KL
sample. With packing (the default) whole units are packed, best-fit decreasing, into rows of at most `capacity`
tokens (max_len; a unit longer than that gets a row of its own), with positions restarting at 0 for every
sample, so attention stays within each sample exactly as in SFT.
Without packing every sample is its own right-padded row. Either way `row_unit` says which unit each row holds
(the first unit of a packed row), so a token budget can split a batch into micro-batches of whole units.
"""

from __future__ import annotations

from typing import Sequence

import torch

from llm_dojo.data.batching import pack_best_fit_decreasing
from llm_dojo.data.encode import IGNORE_INDEX

# (sample id, input ids, labels)
Sample = tuple[int, list[int], list[int]]


def pair_units(items: Sequence[dict]) -> list[list[Sample]]:
    """Encoded pairs → one unit per pair: [chosen (id 2i), rejected (id 2i + 1)]."""
    return [[(2 * i, item["chosen_input_ids"], item["chosen_labels"]),
             (2 * i + 1, item["rejected_input_ids"], item["rejected_labels"])] for i, item in enumerate(items)]


def kto_units(items: Sequence[dict]) -> list[list[Sample]]:
    """Encoded KTO examples → one unit per example: [the example (id i), its KL sample (id n + i)].

    The KL sample (`preference.attach_kl_samples`) is the example's prompt followed by another example's answer:
    its log-ratio estimates how far the policy has drifted from the reference in general (KTO's baseline z).
    """
    n = len(items)
    return [[(i, item["input_ids"], item["labels"]), (n + i, item["kl_input_ids"], item["kl_labels"])]
            for i, item in enumerate(items)]


def collate_units(units: list[list[Sample]], pad_token_id: int, capacity: int, packing: bool = True
                  ) -> dict[str, torch.Tensor]:
    """Rows of whole units (packing) or one padded row per sample; see the module's docstring."""
    rows: list[tuple[int, list[Sample]]] = []  # (unit of the row, its samples)
    if packing:
        lengths = [sum(len(ids) for _, ids, _ in unit) for unit in units]
        # A unit longer than a row (two sides of nearly max_len each) gets a row of its own.
        for group in pack_best_fit_decreasing(lengths, max(capacity, *lengths)):
            rows.append((group[0], [sample for unit_index in group for sample in units[unit_index]]))
    else:
        rows = [(unit_index, [sample]) for unit_index, unit in enumerate(units) for sample in unit]
    width = max(sum(len(ids) for _, ids, _ in samples) for _, samples in rows)
    input_ids, labels, position_ids, sample_index, attention_mask = [], [], [], [], []
    for _, samples in rows:
        row_ids, row_labels, row_positions, row_samples = [], [], [], []
        for sample_id, ids, sample_labels in samples:
            row_ids += ids
            row_labels += [IGNORE_INDEX] + sample_labels[1:]  # never predict across a sample boundary
            row_positions += range(len(ids))
            row_samples += [sample_id] * len(ids)
        pad = width - len(row_ids)
        attention_mask.append([1] * len(row_ids) + [0] * pad)
        input_ids.append(row_ids + [pad_token_id] * pad)
        labels.append(row_labels + [IGNORE_INDEX] * pad)
        # Padding restarts its positions at 0: a segment of its own that no real token attends to.
        position_ids.append(row_positions + list(range(pad)))
        sample_index.append(row_samples + [-1] * pad)
    batch = {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "sample_index": torch.tensor(sample_index, dtype=torch.long),
        "row_unit": torch.tensor([unit for unit, _ in rows], dtype=torch.long),
        "row_lengths": torch.tensor([sum(len(ids) for _, ids, _ in samples) for _, samples in rows]),
        "num_units": torch.tensor(len(units)),
    }
    if packing:
        batch["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    else:
        batch["attention_mask"] = torch.tensor(attention_mask, dtype=torch.long)
    batch["num_real_tokens"] = batch["row_lengths"].sum()
    batch["num_samples"] = batch["num_units"]
    return batch


class PreferenceCollator:
    """A list of encoded pairs (or KTO examples) → one batch (collate_units), carrying their per-unit extras:
    precomputed reference log-probs and, for KTO, whether each example is desirable."""

    PER_UNIT_KEYS = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps", "ref_kl_logps")

    def __init__(self, pad_token_id: int, capacity: int, packing: bool = True, kto: bool = False):
        self.pad_token_id = pad_token_id
        self.capacity = capacity
        self.packing = packing
        self.kto = kto

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        units = kto_units(items) if self.kto else pair_units(items)
        batch = collate_units(units, self.pad_token_id, self.capacity, self.packing)
        for key in self.PER_UNIT_KEYS:
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items], dtype=torch.float64)
        if self.kto:
            batch["desirable"] = torch.tensor([item["desirable"] for item in items], dtype=torch.bool)
        return batch


# Entries with one row per batch row along dimension 0 (and positions along dimension 1 where 2-D).
ROW_KEYS = ("input_ids", "labels", "position_ids", "attention_mask", "sample_index", "row_unit", "row_lengths")


def split_units_by_budget(batch: dict, budget: int) -> list[dict]:
    """Micro-batches of whole units holding at most `budget` real tokens each (a bigger unit goes alone).

    Per-unit entries (reference log-probs, labels of KTO examples) stay whole in every part: the loss picks the
    units present from `sample_index`.
    """
    row_units = batch["row_unit"].tolist()
    row_lengths = batch["row_lengths"].tolist()
    unit_rows: dict[int, list[int]] = {}
    for row, unit in enumerate(row_units):
        unit_rows.setdefault(unit, []).append(row)
    groups: list[list[int]] = [[]]
    used = 0
    for rows in unit_rows.values():
        size = sum(row_lengths[r] for r in rows)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1] += rows
        used += size
    if len(groups) == 1:
        return [batch]
    parts = []
    for group in groups:
        width = max(row_lengths[r] for r in group)
        index = torch.tensor(group)
        parts.append({key: (value[index, :width] if value.dim() == 2 else value[index]) if key in ROW_KEYS else value
                      for key, value in batch.items()})
    return parts
