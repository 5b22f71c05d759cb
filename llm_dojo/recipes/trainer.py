"""`transformers.Trainer` with one change: the loss is computed only where it is trained (see llm_dojo/loss.py)."""

from __future__ import annotations

import torch
from transformers import Trainer

from llm_dojo.loss import trained_positions_loss


class DojoTrainer(Trainer):
    """Trainer whose loss projects to the vocabulary only at trained positions.

    The summed token loss is divided by `num_items_in_batch` — the number of trained tokens in the whole
    gradient-accumulation window, counted by the Trainer — so 4 micro-batches of b equal one batch of 4b.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Ask the Trainer to count trained tokens over the accumulation window and pass them to compute_loss,
        # and tell it our loss is already normalised by that count (it must not divide again by the steps).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _ = trained_positions_loss(model, inputs, num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, _ = trained_positions_loss(model, inputs)
        return loss.detach(), None, None
