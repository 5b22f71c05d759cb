"""`dojo bench`: training throughput of four runs on the same model, data, LoRA and seed, one subprocess each.

    dojo bench [--short] [--steps N] [--samples N] [--runs hf_padded,trl,trl_bs1,dojo] [--output FILE.json]
    dojo bench --stage dpo [--samples 48] [--batch-size 4]     (TRL's DPOTrainer against ours: llm_dojo/bench_dpo.py)
    dojo bench --stage grpo [--steps 8]                         (TRL's GRPOTrainer against ours: llm_dojo/bench_grpo.py)

- hf_padded: plain `transformers.Trainer` + PEFT; each batch of 8 padded to its longest sample
  (`DataCollatorForSeq2Seq`), labels from our encoder, the model's own full-logits loss.
- trl: TRL `SFTTrainer` with packing (its default "bfd" strategy, padding-free), batch 8, conversational
  `messages` data, assistant-only loss.
- trl_bs1: the best peer setting measured on this CPU: TRL packing with per-device batch 1 (one ≤1,024-token
  packed sequence per forward), accumulated over `batch_size` forwards so an update sees as many sequences.
- dojo: our `train()` with a user's usual settings — batch 8 and nothing else: packed rows of ≤1,024 tokens,
  the token budget, attention and checkpointing dojo chooses itself (one row per forward on a CPU).

Every run uses LoRA r=16 on all linear layers, alpha 32, dropout 0.05 and fp32; the three peer runs use SDPA and
gradient checkpointing. Tokens are counted for every run by one instrument, a forward pre-hook on the model
(TokenCounter). Each run reports real (non-pad) tokens/s over its training loop, the share of fed tokens that are
padding, its process's peak resident memory and whole-process wall time (load + data + training + evaluation),
the mean training loss, and the held-out loss of its saved adapter over the whole held-out split (same samples,
same function for all). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from llm_dojo.bench_dpo import DPO_RUNS, dpo_worker, format_dpo_table, write_pairs
from llm_dojo.bench_grpo import GRPO_RUNS, compare_grpo, format_grpo_table, grpo_worker, write_prompts

logger = logging.getLogger(__name__)

RUNS = ("hf_padded", "trl", "trl_bs1", "dojo")  # the runners are in llm_dojo/bench_runs.py
RESULT_KEYS = ("tokens_per_s", "pad_fraction", "peak_rss_mb", "wall_seconds", "train_loss", "eval_loss")


@dataclass
class BenchSettings:
    """Everything a run needs; identical for the four runs except where a field names one run."""

    model: str = "smollm2-135m-instruct"
    samples: int = 360  # training records (one epoch over them unless `steps` is set)
    eval_samples: int = 40  # held-out records, evaluated in full
    steps: int = 0  # optimizer steps per run; 0 = one epoch
    seed: int = 0
    learning_rate: float = 2e-4
    batch_size: int = 8  # per optimizer step: hf_padded samples, trl packed sequences, dojo packed rows
    max_len: int = 1024  # truncation length for every run, and TRL's packed-sequence length
    lora_rank: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    workdir: str = ""


# ----------------------------------------------------------------------------------------------------- data


def write_data(settings: BenchSettings) -> tuple[Path, Path]:
    """Generate the train/held-out jsonl files into the work folder (deterministic from the seed)."""
    from llm_dojo.bench_data import make_records, write_jsonl

    folder = Path(settings.workdir)
    train = write_jsonl(make_records(settings.samples, seed=settings.seed), folder / "train.jsonl")
    heldout = write_jsonl(make_records(settings.eval_samples, seed=settings.seed + 1), folder / "heldout.jsonl")
    return train, heldout


# `--short`: two optimizer steps per run with two samples / packed sequences / rows each, 8 held-out records.
# TRL's default step (8 packed sequences joined into one ~8,000-token row) takes 5-8 minutes alone on a 2-core
# CPU, so a short run at batch 8 cannot finish in 10 minutes; at batch 2 the three runs take similar tokens per
# step as dojo's two rows. Its speeds include the first steps' one-time warm-up: quote full-epoch numbers.
SHORT_MODE = {"steps": 2, "samples": 48, "eval_samples": 8, "batch_size": 2}


def worker(run: str, settings: BenchSettings, result_path: Path) -> None:
    """Inside the subprocess: train one stack, evaluate its saved adapter, write the result JSON."""
    from llm_dojo.bench_runs import RUNNERS, heldout_eval

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    folder = Path(settings.workdir)
    out = folder / run
    result = RUNNERS[run](settings, folder / "train.jsonl", out)
    adapter_dir = Path(result.pop("adapter", out / "adapter"))
    result["eval_loss"] = heldout_eval(settings, adapter_dir, folder / "heldout.jsonl")
    fed, real = result["fed_tokens"], result["real_tokens"]
    result["tokens_per_s"] = real / result["train_seconds"]
    result["pad_fraction"] = (fed - real) / fed if fed else 0.0
    result = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    result_path.write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- the parent


def run_in_subprocess(run: str, settings: BenchSettings) -> dict:
    """Start a fresh Python for one run (so its peak memory is its own) and read back its result."""
    result_path = Path(settings.workdir) / f"{run}.result.json"
    command = [sys.executable, "-m", "llm_dojo.bench", "--worker", run, "--settings", json.dumps(asdict(settings)),
               "--result", str(result_path)]
    started = time.perf_counter()
    # The child's stdout goes to our stderr: our stdout ends with exactly one JSON line.
    completed = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if completed.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"bench run '{run}' failed with exit code {completed.returncode} (see the log above)")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def format_table(results: dict) -> str:
    header = (f"{'run':<10} {'tok/s':>8} {'pad':>6} {'peak MB':>9} {'wall s':>8} {'train loss':>11} "
              f"{'eval loss':>10} {'steps':>6}")
    lines = [header]
    for run, r in results.items():
        lines.append(f"{run:<10} {r['tokens_per_s']:>8.1f} {r['pad_fraction']:>6.1%} {r['peak_rss_mb']:>9.0f} "
                     f"{r['wall_seconds']:>8.1f} {r['train_loss']:>11.4f} {r['eval_loss']:>10.4f} "
                     f"{r['optimizer_steps']:>6}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dojo bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchSettings()
    parser.add_argument("--stage", choices=["sft", "dpo", "grpo"], default="sft",
                        help="sft (the four SFT runs), dpo (TRL's DPOTrainer against dojo's; bench_dpo.py) or grpo "
                             "(TRL's GRPOTrainer against dojo's; bench_grpo.py)")
    parser.add_argument("--runs", help=f"comma-separated subset of {','.join(RUNS)} (dpo: "
                                       f"{','.join(DPO_RUNS)}; grpo: {','.join(GRPO_RUNS)})")
    parser.add_argument("--short", action="store_true",
                        help="a smoke-sized run that finishes in minutes on a CPU: " + ", ".join(
                            f"--{k.replace('_', '-')} {v}" for k, v in SHORT_MODE.items())
                        + " unless given (one TRL step of 8 packed 1,024-token sequences alone takes 5-8 "
                        "minutes on a 2-core CPU)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 0: one epoch)")
    parser.add_argument("--samples", type=int, help=f"training records (default {defaults.samples})")
    parser.add_argument("--eval-samples", type=int, help=f"held-out records (default {defaults.eval_samples})")
    parser.add_argument("--batch-size", type=int, help=f"hf_padded samples, trl sequences and dojo rows per "
                        f"optimizer step (default {defaults.batch_size})")
    parser.add_argument("--model", default=defaults.model, help="model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-len", type=int, default=defaults.max_len,
                        help="truncation length of every run, TRL's packed length and dojo's row length")
    parser.add_argument("--output", help="also write the results JSON to this file")
    parser.add_argument("--workdir", help="keep data, adapters and logs here (default: a temporary folder)")
    parser.add_argument("--worker", choices=RUNS + DPO_RUNS + GRPO_RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "dpo":  # 48 length-skewed pairs, 4 per step: the measured TRL setting
        args.runs = args.runs or ",".join(DPO_RUNS)
        args.samples = args.samples or 48
        args.batch_size = args.batch_size or 4
        args.eval_samples = args.eval_samples or 0
        args.steps = args.steps or 0
        if args.learning_rate == defaults.learning_rate:
            args.learning_rate = 5e-5
        return args
    if args.stage == "grpo":  # one demo prompt × 8 completions per step; 8 steps: 7 timed after the warm-up
        args.runs = args.runs or ",".join(GRPO_RUNS)
        args.steps = args.steps or 8
        args.samples = args.samples or 0  # the RL demo's 48 prompts, whatever this says
        args.eval_samples = args.eval_samples or 0
        args.batch_size = args.batch_size or 1  # prompts per optimizer step
        return args
    args.runs = args.runs or ",".join(RUNS)
    # Unset options take the short mode's values with --short, the full bench's otherwise.
    for name, full_value in (("steps", defaults.steps), ("samples", defaults.samples),
                             ("eval_samples", defaults.eval_samples), ("batch_size", defaults.batch_size)):
        if getattr(args, name) is None:
            setattr(args, name, SHORT_MODE.get(name, full_value) if args.short else full_value)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """`dojo bench`: run the chosen stacks one after another; the last stdout line is the results JSON."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.worker:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = BenchSettings(**json.loads(args.settings))
        if args.worker in DPO_RUNS:
            dpo_worker(args.worker, settings, Path(args.result))
        elif args.worker in GRPO_RUNS:
            grpo_worker(args.worker, settings, Path(args.result))
        else:
            worker(args.worker, settings, Path(args.result))
        return 0
    known = {"dpo": DPO_RUNS, "grpo": GRPO_RUNS}.get(args.stage, RUNS)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in known]
    if unknown or not runs:
        print(f"dojo bench: error: unknown run(s) {unknown}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dojo-bench-") as scratch:
        settings = BenchSettings(model=args.model, samples=args.samples, eval_samples=args.eval_samples,
                                 steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                 learning_rate=args.learning_rate,
                                 max_len=args.max_len,
                                 # the GRPO issue's LoRA has no dropout (dpo's and sft's keep the default)
                                 lora_dropout=0.0 if args.stage == "grpo" else BenchSettings.lora_dropout,
                                 workdir=str(Path(args.workdir or scratch).resolve()))
        Path(settings.workdir).mkdir(parents=True, exist_ok=True)
        {"dpo": write_pairs, "grpo": write_prompts}.get(args.stage, write_data)(settings)
        results = {}
        for run in runs:
            logger.info("bench: running %s", run)
            results[run] = run_in_subprocess(run, settings)
    print({"dpo": format_dpo_table, "grpo": format_grpo_table}.get(args.stage, format_table)(results), file=sys.stderr)
    comparison = compare_grpo(results) if args.stage == "grpo" else {}
    if comparison:
        results["comparison"] = comparison  # TRL ÷ dojo: the speed-ups and the peak-memory ratio
    line = json.dumps(results)
    if args.output:
        Path(args.output).write_text(json.dumps({"settings": asdict(settings), "results": results}, indent=2) + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
