"""`transformers.Trainer` with two changes: the loss is computed only where it is trained (see llm_dojo/loss.py),
and it counts the real tokens and samples it trained on (the Trainer's own samples/s counts packed rows)."""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import DistributedType
from transformers import Trainer

from llm_dojo.data.batching import split_by_token_budget
from llm_dojo.loss import trained_positions_loss
from llm_dojo.memory import return_freed_memory


class CountingCollator:
    """Wraps a collator and adds how many real tokens and samples the batch holds (read, then dropped, by the loss).

    Counting in the collator would over-count: the dataloader fetches one batch ahead. So the counts travel with
    the batch and DojoTrainer adds them up only for batches it actually trains on.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        if "row_lengths" not in batch:  # a collator that packs the batch itself says how long its rows are
            batch["row_lengths"] = torch.tensor([len(row["input_ids"]) for row in rows])
        batch["num_real_tokens"] = batch["row_lengths"].sum()
        if "num_samples" not in batch:  # preference collators count their pairs themselves
            # A packed row holds one sample per position 0; an unpacked one is one sample.
            batch["num_samples"] = torch.tensor(sum(row["position_ids"].count(0) if "position_ids" in row else 1
                                                    for row in rows))
        return batch


class DojoTrainer(Trainer):
    """Trainer whose loss projects to the vocabulary only at trained positions.

    The summed token loss is divided by `num_items_in_batch` — the number of trained tokens in the whole
    gradient-accumulation window, counted by the Trainer — so 4 micro-batches of b equal one batch of 4b.

    Token budget: a batch whose rows hold more than `args.micro_batch_tokens` real tokens is split into
    micro-batches of whole rows under the budget, each run forward and backward on its own. Every part is
    normalised by the same count, so the summed gradients equal the unsplit batch's, while peak memory follows
    the budget instead of the batch size. On a CPU the freed heap is handed back after each part (memory.py).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Ask the Trainer to count trained tokens over the accumulation window and pass them to compute_loss,
        # and tell it our loss is already normalised by that count (it must not divide again by the steps).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self.real_tokens_seen = 0
        self.samples_seen = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "num_real_tokens" in inputs:  # counted here, once per batch actually trained (see CountingCollator)
            self.real_tokens_seen += int(inputs["num_real_tokens"])
            self.samples_seen += int(inputs["num_samples"])
        # DeepSpeed steps its optimizer inside every backward it is handed at an accumulation boundary, so a batch
        # split into parts would become several smaller updates: under DeepSpeed the batch goes whole.
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        budget = None if deepspeed else getattr(self.args, "micro_batch_tokens", None)
        parts = self.micro_batches(inputs, budget)
        loss = None
        # Several processes: only the last part's backward may synchronise gradients. Ranks can split their
        # batches into different numbers of parts, and DDP must all-reduce the same number of times on each.
        for index, part in enumerate(parts):  # forward + backward per part; gradients add up in .grad
            last = index == len(parts) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                part_loss = super().training_step(model, part, num_items_in_batch)
            loss = part_loss if loss is None else loss + part_loss
            if self.args.device.type == "cpu":  # glibc keeps freed activations mapped: see llm_dojo/memory.py
                return_freed_memory()
        return loss

    def micro_batches(self, inputs: dict, budget: int | None) -> list[dict]:
        """The batch cut into parts of whole rows under the token budget (or whole, without a budget)."""
        lengths = inputs["row_lengths"].tolist() if "row_lengths" in inputs else []
        return split_by_token_budget(inputs, lengths, budget) if budget and lengths else [inputs]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _ = trained_positions_loss(model, inputs, num_items_in_batch)
        if (self.args.average_tokens_across_devices and num_items_in_batch is not None
                and self.accelerator.num_processes > 1):
            # `num_items_in_batch` then counts the trained tokens of every process, and DDP averages the gradients
            # over processes: multiply by their number so the update (and the logged loss, which the Trainer
            # averages over processes) equals one process training the whole global batch.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def counts_over_all_processes(self) -> tuple[int, int]:
        """(real tokens, samples) trained by all processes together."""
        counts = torch.tensor([self.real_tokens_seen, self.samples_seen], device=self.args.device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return int(counts[0]), int(counts[1])

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, _ = trained_positions_loss(model, inputs)
        return loss.detach(), None, None
