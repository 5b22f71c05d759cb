"""Freed CPU memory goes back to the OS between micro-batches (llm_dojo/memory.py)."""

import subprocess
import sys

import pytest
import torch

from llm_dojo import memory

glibc_only = pytest.mark.skipif(memory._glibc_malloc_trim() is None, reason="needs glibc's malloc_trim (Linux)")


FRAGMENTED_HEAP = """
import ctypes, psutil, torch
from llm_dojo import memory
ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
blocks, keepers = [], []
for _ in range(100):  # 300 MB, each block followed by a small live one, as activations leave the heap
    blocks.append(torch.ones(3 << 20, dtype=torch.uint8))
    keepers.append(torch.ones(1024, dtype=torch.uint8))
del blocks  # 100 free holes between live blocks: malloc keeps them mapped
before = psutil.Process().memory_info().rss
assert memory.return_freed_memory() is True
print(before - psutil.Process().memory_info().rss)
"""


@glibc_only
def test_freed_heap_blocks_are_handed_back():
    # In its own process: how glibc serves blocks depends on what the process allocated before.
    completed = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout.split()[-1]) > 250 << 20


def test_another_allocator_or_platform_is_left_alone(monkeypatch):
    memory._glibc_malloc_trim.cache_clear()
    try:
        monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
        assert memory.return_freed_memory() is False
        monkeypatch.delenv("LD_PRELOAD")
        memory._glibc_malloc_trim.cache_clear()
        monkeypatch.setattr(sys, "platform", "darwin")
        assert memory.return_freed_memory() is False
    finally:
        memory._glibc_malloc_trim.cache_clear()


def test_the_trainer_hands_memory_back_after_every_micro_batch_on_a_cpu(tiny_model_dir, tmp_path, monkeypatch):
    from llm_dojo.recipes import trainer as dojo_trainer

    calls = []
    monkeypatch.setattr(dojo_trainer, "return_freed_memory", lambda: calls.append(1) or True)
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    args.micro_batch_tokens = 8
    trainer = dojo_trainer.DojoTrainer(model=model, args=args)
    ids = torch.arange(1, 13).reshape(2, 6)
    batch = {"input_ids": ids, "labels": ids.clone(), "row_lengths": torch.tensor([6, 6]),
             "num_real_tokens": torch.tensor(12), "num_samples": torch.tensor(2)}
    trainer.training_step(model, batch, num_items_in_batch=torch.tensor(10))
    assert len(calls) == 2  # two parts under an 8-token budget, one hand-back after each
