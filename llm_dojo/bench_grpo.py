"""`dojo bench --stage grpo`: seconds per GRPO step and memory of TRL's `GRPOTrainer` and of `dojo train stage=grpo`
on the same model, LoRA, prompts, reward and sampling settings, one subprocess each.

    dojo bench --stage grpo [--steps 8] [--runs trl_grpo,dojo_grpo] [--output FILE.json]

What one step is, for both runs: one prompt of the RL demo (data/demo_rl_prompts.jsonl, ~60 tokens each), 8
completions sampled from it (temperature 1.0, top-p 1, at most 32 new tokens, ended by the chat's <|im_end|>),
each scored by the demo's format reward (1.0 when the whole completion, stripped, matches
`<answer>[^<>]{1,80}</answer>`, else 0.0), group advantages (r − mean) / std, and one optimizer step on the DAPO
token-level policy-gradient loss (β = 0: no reference model, num_iterations 1: no old log-probs). Both use the
embedded SmolLM2-135M-Instruct in fp32, LoRA r=16 on all linear layers (alpha 32, dropout 0), the same learning
rate with a constant schedule and no weight decay, the same seed.
- trl_grpo: TRL 1.16 `GRPOTrainer` with transformers' `generate` (no vLLM): per_device_train_batch_size 8 (= one
  prompt × num_generations 8), gradient_accumulation_steps 1, prompts as a "prompt" column of messages, the
  reward as a plain function with TRL's signature; gradient checkpointing as TRL defaults (on).
- dojo_grpo: our `train()` with stage=grpo, per_device_train_batch_size 1 prompt, num_generations 8,
  reward_funcs=format with the same pattern; everything else dojo's own choice (checkpointing, micro-batches).

Measured the same way for both: each optimizer step's wall time by one TrainerCallback (on_step_begin →
on_step_end, time.perf_counter), so a step includes sampling, scoring, forward, backward and the optimizer;
seconds per step = the median over the steps after the first (the first pays one-time warm-up). Sampling
differs between the runs (different random streams, and the two stacks see the prompts in different seeded orders),
so their completions differ in length and a step's cost with them: seconds per completion token (sampled tokens,
stop token included, summed over the same steps) compares the work done. Also reported: the mean completion length
both trainers log (`completions/mean_length`), the share of step time spent sampling, the mean reward, and the peak
resident memory of the run's own process. The last line printed is one JSON object with the runs and the ratios
(TRL ÷ dojo).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from pathlib import Path

GRPO_RUNS = ("trl_grpo", "dojo_grpo")
PROMPTS = Path(__file__).resolve().parent.parent / "data" / "demo_rl_prompts.jsonl"
FORMAT_PATTERN = "<answer>[^<>]{1,80}</answer>"  # the demo's reward (train_args/demo_grpo.yaml)
NUM_GENERATIONS = 8
MAX_COMPLETION_LENGTH = 32
TEMPERATURE = 1.0

_FORMAT = re.compile(FORMAT_PATTERN, re.DOTALL)


def trl_format_reward(completions: list, **kwargs) -> list[float]:
    """The demo's format reward with TRL's reward signature: the same whole-completion match as dojo's `format`."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [1.0 if _FORMAT.fullmatch(text.strip()) else 0.0 for text in texts]


def step_timer():
    """A TrainerCallback that keeps each optimizer step's wall time in `.seconds` (on_step_begin → on_step_end)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def logged_per_step(log_history: list[dict], key: str) -> list[float]:
    """One value per optimizer step from the per-step training logs (logging_steps=1)."""
    return [entry[key] for entry in log_history if key in entry and "loss" in entry]


# ------------------------------------------------------------------------------------------------ the runs


def run_trl_grpo(settings, prompts_path: Path, out: Path) -> dict:
    """TRL 1.16 GRPOTrainer with a PEFT LoRA: one prompt × 8 completions per step, transformers' generate."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from llm_dojo.bench_runs import load_base, lora_config, peak_rss_mb
    from llm_dojo.models.loading import load_tokenizer

    class TimedGRPOTrainer(GRPOTrainer):
        """Records the seconds of each sampling call. TRL times it only for wandb/trackio/mlflow; wrapping its
        private `_generate_single_turn` (TRL 1.16) is acceptable in a benchmark and checked: one call per step."""

        def __init__(self, *args, **kwargs):
            self.generation_seconds: list[float] = []
            super().__init__(*args, **kwargs)

        def _generate_single_turn(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.generation_seconds.append(time.perf_counter() - started)

    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model)
    model = load_base(settings)
    records = [json.loads(line) for line in prompts_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["messages"]} for r in records])  # TRL's conversational prompt column
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=NUM_GENERATIONS, gradient_accumulation_steps=1,
                      num_generations=NUM_GENERATIONS, max_completion_length=MAX_COMPLETION_LENGTH,
                      temperature=TEMPERATURE, top_p=1.0, beta=0.0, loss_type="dapo", num_iterations=1,
                      max_steps=settings.steps, learning_rate=settings.learning_rate, lr_scheduler_type="constant",
                      weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", seed=settings.seed,
                      disable_tqdm=True, use_cpu=True, use_vllm=False,
                      # GRPOConfig's own default, written out: on (TRL's default kwargs).
                      gradient_checkpointing=True,
                      # TRL's configs default to bf16=True; on a CPU without bf16 units that autocast emulates every
                      # matmul. Both runs compute in fp32.
                      bf16=False)
    timer = step_timer()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=trl_format_reward, args=args, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=lora_config(model, settings),
                               callbacks=[timer])
    trainer.train()
    history = trainer.state.log_history
    return {"step_seconds": timer.seconds, "generation_seconds": list(trainer.generation_seconds),
            "mean_lengths": logged_per_step(history, "completions/mean_length"),
            "rewards": logged_per_step(history, "reward"), "losses": logged_per_step(history, "loss"),
            "peak_rss_mb": peak_rss_mb(), "optimizer_steps": trainer.state.global_step,
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def run_dojo_grpo(settings, prompts_path: Path, out: Path) -> dict:
    """`dojo train stage=grpo` with the demo's settings: one prompt per step, 8 completions, the format reward."""
    from llm_dojo.bench_runs import peak_rss_mb
    from llm_dojo.config import load_config
    from llm_dojo.recipes import sft

    timer = step_timer()
    usual_callbacks = sft.training_callbacks
    # train() builds its Trainer itself; the timer joins through the recipe's callback list. Patching our own
    # module, in this run's subprocess only, is acceptable in a benchmark: nothing else runs in this process.
    sft.training_callbacks = lambda args: usual_callbacks(args) + [timer]
    overrides = {
        "model_name_or_path": settings.model, "train_data_path": str(prompts_path), "stage": "grpo",
        "reward_funcs": "format", "reward_format_pattern": FORMAT_PATTERN, "num_generations": NUM_GENERATIONS,
        "max_completion_length": MAX_COMPLETION_LENGTH, "temperature": TEMPERATURE, "top_p": 1.0, "beta": 0.0,
        "rl_loss_type": "dapo", "num_iterations": 1, "train_mode": "lora", "model_dtype": "fp32",
        "lora_rank": settings.lora_rank, "lora_alpha": settings.lora_alpha, "lora_dropout": settings.lora_dropout,
        "lora_target_modules": "all-linear", "max_len": settings.max_len, "per_device_train_batch_size": 1,
        "max_steps": settings.steps, "learning_rate": settings.learning_rate, "lr_scheduler_type": "constant",
        "weight_decay": 0.0, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": settings.seed,
        "disable_tqdm": True, "output_dir": str(out), "overwrite_output_dir": True,
    }
    # Strings are quoted: the override parser reads YAML, where a bare `no` would become False.
    config = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in overrides.items()])
    summary = sft.train(config)
    history = summary["log_history"]
    return {"step_seconds": timer.seconds, "generation_seconds": logged_per_step(history, "timing/generation_s"),
            "mean_lengths": logged_per_step(history, "completions/mean_length"),
            "rewards": logged_per_step(history, "reward"), "losses": logged_per_step(history, "loss"),
            "peak_rss_mb": peak_rss_mb(), "optimizer_steps": summary["steps"],
            "gradient_checkpointing": bool(config.training.gradient_checkpointing)}


GRPO_RUNNERS = {"trl_grpo": run_trl_grpo, "dojo_grpo": run_dojo_grpo}


# ------------------------------------------------------------------------------------------------ the measures


def step_measures(step_seconds: list[float], mean_lengths: list[float], generation_seconds: list[float]) -> dict:
    """Seconds per step (median after the first), per sampled completion token and the sampling share."""
    if not step_seconds or len(mean_lengths) != len(step_seconds):
        raise RuntimeError(f"expected one timed step per logged step, got {len(step_seconds)} timings and "
                           f"{len(mean_lengths)} logged completion lengths")
    first = 1 if len(step_seconds) > 1 else 0  # the first step pays one-time warm-up; with one step keep it
    seconds = step_seconds[first:]
    tokens = [length * NUM_GENERATIONS for length in mean_lengths[first:]]
    measures = {"s_per_step": statistics.median(seconds), "s_per_completion_token": sum(seconds) / sum(tokens),
                "mean_completion_len": statistics.mean(mean_lengths), "timed_steps": len(seconds)}
    if len(generation_seconds) == len(step_seconds):
        measures["generation_share"] = sum(generation_seconds[first:]) / sum(seconds)
    return measures


def grpo_worker(run: str, settings, result_path: Path) -> None:
    """Inside the subprocess: train one stack on the prompts, write the result JSON."""
    folder = Path(settings.workdir)
    raw = GRPO_RUNNERS[run](settings, folder / "prompts.jsonl", folder / run)
    result = step_measures(raw["step_seconds"], raw["mean_lengths"], raw["generation_seconds"])
    result.update(peak_rss_mb=raw["peak_rss_mb"], optimizer_steps=raw["optimizer_steps"],
                  gradient_checkpointing=raw["gradient_checkpointing"],
                  mean_reward=statistics.mean(raw["rewards"]) if raw["rewards"] else None,
                  first_loss=raw["losses"][0] if raw["losses"] else None,
                  step_seconds=[round(s, 3) for s in raw["step_seconds"]],
                  mean_lengths=raw["mean_lengths"])
    result_path.write_text(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


def write_prompts(settings) -> None:
    """The RL demo's prompts ({"messages": [...]} records) into the work folder, read by both runs."""
    shutil.copyfile(PROMPTS, Path(settings.workdir) / "prompts.jsonl")


def compare_grpo(results: dict) -> dict:
    """TRL ÷ dojo: the speed-up per step and per sampled token, and the peak-memory ratio (when both ran)."""
    if not all(run in results for run in GRPO_RUNS):
        return {}
    trl, dojo = results["trl_grpo"], results["dojo_grpo"]
    return {"speedup_per_step": round(trl["s_per_step"] / dojo["s_per_step"], 3),
            "speedup_per_completion_token": round(trl["s_per_completion_token"] / dojo["s_per_completion_token"], 3),
            "peak_rss_ratio": round(trl["peak_rss_mb"] / dojo["peak_rss_mb"], 3)}


def format_grpo_table(results: dict) -> str:
    lines = [f"{'run':<10} {'s/step':>7} {'ms/token':>9} {'mean len':>9} {'sampling':>9} {'peak MB':>8} "
             f"{'wall s':>7} {'reward':>7} {'ckpt':>5} {'steps':>6}"]
    for run in GRPO_RUNS:
        if run not in results:
            continue
        r = results[run]
        share = f"{r['generation_share']:.0%}" if "generation_share" in r else "-"
        lines.append(f"{run:<10} {r['s_per_step']:>7.2f} {1000 * r['s_per_completion_token']:>9.1f} "
                     f"{r['mean_completion_len']:>9.1f} {share:>9} {r['peak_rss_mb']:>8.0f} {r['wall_seconds']:>7.1f} "
                     f"{r['mean_reward'] if r['mean_reward'] is not None else float('nan'):>7.3f} "
                     f"{'on' if r['gradient_checkpointing'] else 'off':>5} {r['optimizer_steps']:>6}")
    comparison = compare_grpo(results)
    if comparison:
        lines.append(f"TRL ÷ dojo: {comparison['speedup_per_step']:.2f}× per step, "
                     f"{comparison['speedup_per_completion_token']:.2f}× per sampled token, "
                     f"{comparison['peak_rss_ratio']:.2f}× peak memory "
                     f"(s/step: median over the steps after the first)")
    return "\n".join(lines)
