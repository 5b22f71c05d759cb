"""Warnings from libraries that say nothing a user can act on, silenced by category and message (never all logging).

Each entry names why it is safe to hide. Anything not listed still reaches the user.
"""

from __future__ import annotations

import warnings

# (category, message regex, why it is safe to hide)
HARMLESS_WARNINGS = [
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found",
     "the Trainer asks for pinned memory on every machine; on a CPU it is simply not used"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "raised inside transformers/peft by their own calls, not by ours"),
    (UserWarning, r"Unable to fetch remote file due to the following error",
     "PEFT looks up the base model's config on the hub to detect added tokens; the embedded alias is no hub id"),
    (UserWarning, r"Could not find a config file in .* - will assume that the vocabulary was not modified",
     "same lookup; we save the tokenizer next to the adapter, so the vocabulary is known"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated",
     "raised by a library's import, not by anything the user runs"),
]


def silence_library_warnings() -> None:
    """Install the filters of HARMLESS_WARNINGS (idempotent)."""
    for category, message, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
