"""`dojo bench --stage dpo`: DPO throughput and memory of TRL's `DPOTrainer` and of `dojo train stage=dpo` on the
same model, LoRA, pairs and batch, one subprocess each (docs/benchmarks.md, "Preference training").

    dojo bench --stage dpo [--pairs 48] [--batch-size 4] [--runs trl_dpo,dojo_dpo] [--output FILE.json]

The pairs are length-skewed like real preference sets: a generated question (bench_data's topics) and two
answers of 10 to 300 words each, drawn independently from a log-uniform length, so most answers are short and a
few are long. Both runs: the embedded SmolLM2-135M-Instruct in fp32, LoRA r=16 on all linear layers (alpha 32,
dropout 0), DPO sigmoid with β = 0.1, the reference = the base with the adapter off, one epoch, the same pairs
per optimizer step, learning rate 5e-5. TRL runs its defaults (padded batches, gradient checkpointing on as in the
issue's measurement); dojo runs its own (packed rows of ≤ max_len tokens with per-sample attention, the CPU token
budget, checkpointing chosen by itself).

Counted for both the same way: real tokens = the tokens of every pair's chosen and rejected sequence (prompt
included, our encoding; TRL renders the same official template), divided by the seconds of the training loop;
peak RSS of the run's own process; the mean training loss (both start at log 2). The last line printed is one JSON
object.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

DPO_RUNS = ("trl_dpo", "dojo_dpo")


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` preference records {"prompt": [user], "chosen": [assistant], "rejected": [assistant]}."""
    from llm_dojo.bench_data import QUESTION_FORMS, TOPICS, _answer, _fill

    rng = random.Random(seed)

    def words() -> int:  # log-uniform in [10, 300]: many short answers, a few long ones
        return round(math.exp(rng.uniform(math.log(10), math.log(300))))

    pairs = []
    for _ in range(n):
        bank = TOPICS[rng.choice(sorted(TOPICS))]
        question = _fill(rng.choice(QUESTION_FORMS), bank, rng)
        chosen, rejected = _answer(words(), bank, rng), _answer(words(), bank, rng)
        pairs.append({"prompt": [{"role": "user", "content": question}],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


def pair_tokens(path: Path, model: str, max_len: int) -> tuple[int, int]:
    """(pairs, tokens of all chosen + rejected sequences) by our encoder: the same count for both runs."""
    from llm_dojo.config import DataArguments
    from llm_dojo.data.preference import prepare_preference_data
    from llm_dojo.models.loading import load_tokenizer

    prepared = prepare_preference_data(DataArguments(train_data_path=str(path), max_len=max_len), "dpo",
                                       load_tokenizer(model))
    return len(prepared.train), prepared.stats.tokens


def run_trl_dpo(settings, train_path: Path, out: Path) -> dict:
    """TRL 1.16 DPOTrainer with a PEFT LoRA (its reference: the same model with the adapter disabled)."""
    import torch
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    from llm_dojo.bench_runs import load_base, lora_config, peak_rss_mb
    from llm_dojo.models.loading import load_tokenizer

    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model)
    model = load_base(settings)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=settings.batch_size, num_train_epochs=1,
                     learning_rate=settings.learning_rate, beta=0.1, loss_type=["sigmoid"],
                     max_length=settings.max_len, gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="no",
                     report_to="none", seed=settings.seed, disable_tqdm=True, use_cpu=True, dataset_num_proc=1,
                     # TRL's configs default to bf16=True; on a CPU without bf16 units that autocast emulates every
                     # matmul (a 4-pair step took ~5 minutes here). Both runs compute in fp32.
                     bf16=False,
                     lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=load_dataset("json", data_files=str(train_path), split="train"),
                         peft_config=lora_config(model, settings))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"train_seconds": seconds, "peak_rss_mb": peak_rss_mb(), "optimizer_steps": trainer.state.global_step,
            "first_loss": losses[0], "train_loss": sum(losses) / len(losses)}


def run_dojo_dpo(settings, train_path: Path, out: Path) -> dict:
    """`dojo train stage=dpo` with a user's usual settings: the batch size and nothing else."""
    from llm_dojo.bench_runs import peak_rss_mb
    from llm_dojo.config import load_config
    from llm_dojo.recipes.sft import train

    config = load_config(None, [
        f"model_name_or_path={settings.model}", f"train_data_path={train_path}", "stage=dpo", "beta=0.1",
        f"output_dir={out}", "overwrite_output_dir=true", f"per_device_train_batch_size={settings.batch_size}",
        "num_train_epochs=1", f"learning_rate={settings.learning_rate}", f"lora_rank={settings.lora_rank}",
        f"lora_alpha={settings.lora_alpha}", "lora_dropout=0", f"max_len={settings.max_len}",
        f"seed={settings.seed}", "logging_steps=1", "save_strategy=no", "disable_tqdm=true",
        "lr_scheduler_type=linear", "warmup_steps=0", "weight_decay=0.0"])
    summary = train(config)
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    return {"train_seconds": summary["train_seconds"], "peak_rss_mb": peak_rss_mb(),
            "optimizer_steps": summary["steps"], "first_loss": losses[0], "train_loss": sum(losses) / len(losses)}


DPO_RUNNERS = {"trl_dpo": run_trl_dpo, "dojo_dpo": run_dojo_dpo}


def dpo_worker(run: str, settings, result_path: Path) -> None:
    """Inside the subprocess: train one stack on the pairs, write the result JSON."""
    folder = Path(settings.workdir)
    result = DPO_RUNNERS[run](settings, folder / "pairs.jsonl", folder / run)
    pairs, tokens = json.loads((folder / "pairs.count.json").read_text())
    result.update(pairs=pairs, real_tokens=tokens, tokens_per_s=tokens / result["train_seconds"])
    result_path.write_text(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


def write_pairs(settings) -> None:
    folder = Path(settings.workdir)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in make_pairs(settings.samples,
                                                                                          settings.seed)),
                    encoding="utf-8")
    (folder / "pairs.count.json").write_text(json.dumps(pair_tokens(path, settings.model, settings.max_len)))


def format_dpo_table(results: dict) -> str:
    lines = [f"{'run':<10} {'tok/s':>8} {'peak MB':>9} {'wall s':>8} {'first loss':>11} {'mean loss':>10} {'steps':>6}"]
    for run, r in results.items():
        lines.append(f"{run:<10} {r['tokens_per_s']:>8.1f} {r['peak_rss_mb']:>9.0f} {r['wall_seconds']:>8.1f} "
                     f"{r['first_loss']:>11.4f} {r['train_loss']:>10.4f} {r['optimizer_steps']:>6}")
    return "\n".join(lines)
