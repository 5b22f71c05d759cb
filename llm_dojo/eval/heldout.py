"""Held-out loss and perplexity on exactly the tokens training trains: the same rendering, masks and loss.

The conversations are encoded by `data/encode.py` (the official template rendered once, answers plus their
end-of-turn token labelled) with the chat format and `max_len` saved next to the adapter, and the loss is
`recipes/outputs.heldout_loss`: summed over every trained token of the set, divided once. So it equals the
`eval_loss` that `dojo train` writes to training_summary.json for the same data (tested to 1e-5 relative).
"""

from __future__ import annotations

import math

from llm_dojo.data.batching import PaddedCollator, samples_as_records
from llm_dojo.data.chat_format import ChatFormat
from llm_dojo.data.encode import encode_dataset
from llm_dojo.data.records import Conversation
from llm_dojo.recipes.outputs import ListDataset, heldout_loss


def heldout_metrics(model, tokenizer, chat_format: ChatFormat, conversations: list[Conversation], *, max_len: int,
                    mask_history: bool = False, batch_size: int = 4) -> dict[str, float]:
    """{"loss", "perplexity", "loss_tokens", "loss_samples"} over the trained tokens of `conversations`."""
    samples, stats = encode_dataset(conversations, tokenizer, chat_format, max_len, mask_history)
    dataset = ListDataset(samples_as_records(samples))
    # Each sample in its own padded row: the same per-sample attention the packed training rows have.
    loss = heldout_loss(model, dataset, PaddedCollator(tokenizer.pad_token_id), batch_size=batch_size)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "loss_tokens": stats.trained_tokens,
            "loss_samples": stats.samples}
