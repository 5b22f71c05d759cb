"""One data-preparation function for SFT: sources → checked conversations → chat format → encoded samples.

`dojo train`, `dojo inspect` and `dojo bench` all call `prepare_sft_data`, so what you inspect is exactly what
trains. Everything here can fail on the user's input, and does so before any model weights are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from llm_dojo.data.chat_format import ChatFormat, resolve_chat_format
from llm_dojo.data.encode import EncodedSample, EncodeStats, encode_dataset
from llm_dojo.data.records import Conversation, load_conversations
from llm_dojo.data.sources import LoadReport

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Encoded training (and optional held-out) samples, with what was read and how it was rendered."""

    chat_format: ChatFormat
    conversations: list[Conversation]
    report: LoadReport
    train: list[EncodedSample]
    stats: EncodeStats
    eval: Optional[list[EncodedSample]] = None
    eval_stats: Optional[EncodeStats] = None


def prepare_sft_data(data, tokenizer, seed: int = 0, with_eval: bool = True) -> PreparedData:
    """Read, check and encode the training (and, with_eval, the held-out) data of a DataArguments section."""
    chat_format = resolve_chat_format(tokenizer, data.template_name)
    logger.info("chat template: %s; trained terminator: %r; stop tokens: %s", chat_format.name,
                chat_format.terminator, list(chat_format.stop_tokens))
    conversations, report = load_conversations(data.train_data_path, data.dataset_format, data.skip_invalid,
                                               data.max_samples, data.train_data_ratios, seed)
    train, stats = encode_dataset(conversations, tokenizer, chat_format, data.max_len, data.mask_history)
    logger.info("train data: %d records read, %d skipped; %s", report.records, report.skipped, stats.summary())
    prepared = PreparedData(chat_format, conversations, report, train, stats)
    if with_eval and data.eval_data_path:
        eval_conversations, _ = load_conversations(data.eval_data_path, data.dataset_format, data.skip_invalid)
        prepared.eval, prepared.eval_stats = encode_dataset(eval_conversations, tokenizer, chat_format,
                                                            data.max_len, data.mask_history)
        logger.info("eval data: %s", prepared.eval_stats.summary())
    return prepared
