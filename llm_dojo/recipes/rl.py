"""RL with verifiable rewards (stage: grpo), top to bottom: config → prompts → model (+ reference, teacher) →
a Trainer whose every step samples, scores and learns → saved adapter. `dojo train CONFIG.yaml stage=grpo` lands
here (sft.train hands over).

One step, for a batch of prompts (per_device_train_batch_size of them):
1. sample `num_generations` completions of each prompt with the current policy (rollout/generate.py), keeping the
   chat format's stop token, which is trained like SFT's terminator;
2. score them: the reward functions (rewards/, weighted sum), then advantages from llm_tricks/rl — each
   completion against its own group (grpo: (r − mean) / (std + 1e-4); rloo: against the mean of the others) —
   plus, with a teacher, kd_coef × (teacher log-prob − policy log-prob) per sampled token;
3. the clipped policy-gradient loss of llm_tricks/rl/policy_loss.py (+ β × k3 KL to the reference: the base model
   with the adapter off), forward and backward over micro-batches of whole completions.
With num_iterations > 1 the same completions serve that many optimizer steps; the log-probs they were sampled with
(`old_logps`) make the importance ratio, clipped to [1 − ε, 1 + ε_high].
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Optional

import torch

from llm_dojo.data.chat_format import resolve_chat_format
from llm_dojo.data.encode import IGNORE_INDEX
from llm_dojo.data.prompts import prepare_prompts
from llm_dojo.infer.common import stop_token_ids
from llm_dojo.loss import positions_to_keep
from llm_dojo.models.adapters import build_optimizer
from llm_dojo.models.loading import load_model, load_tokenizer, parse_dtype
from llm_dojo.preflight import check_model, check_output_dir
from llm_dojo.recipes.checkpoints import checkpoint_to_resume
from llm_dojo.recipes.outputs import ListDataset
from llm_dojo.recipes.trainer import DojoTrainer
from llm_dojo.rewards.registry import RewardSet
from llm_dojo.rollout.generate import Rollout, sample_completions
from llm_tricks.preference import logps_of_targets
from llm_tricks.rl import group_advantages, policy_loss, rloo_advantages

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ batches of rows


def completion_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device) -> dict:
    """Rows prompt + completion, right-padded: input_ids, attention_mask, labels (the completion tokens only) and
    completion_mask (rows × longest completion), whose ones line up with the trained labels in row order."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(len(r) for r in rows)
    longest = max(len(c) for c in completion_ids)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), longest), dtype=torch.float32)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, :len(rows[i])] = torch.tensor(rows[i])
        attention_mask[i, :len(rows[i])] = 1
        labels[i, len(prompt):len(rows[i])] = torch.tensor(completion)
        completion_mask[i, :len(completion)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "labels": labels.to(device), "completion_mask": completion_mask.to(device)}


def completion_logps(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log π(token | everything before it) of every completion token, (rows, longest completion), 0 at padding.

    Logits are divided by the sampling temperature, so the ratio compares the distribution the tokens were drawn
    from. Only positions that predict a completion token get logits (`logits_to_keep`, as in the SFT loss).
    """
    keep = positions_to_keep(batch["labels"])
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                    use_cache=False)
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    token_logps = logps_of_targets(outputs.logits / temperature, targets)
    mask = batch["completion_mask"].bool()
    return torch.zeros(mask.shape, dtype=token_logps.dtype, device=token_logps.device).masked_scatter(mask, token_logps)


def padded_rows(values: list[torch.Tensor], width: int, device) -> torch.Tensor:
    """A list of 1-D tensors (one per row) → (rows, width), zero after each row's end."""
    out = torch.zeros(len(values), width, dtype=torch.float32)
    for i, row in enumerate(values):
        out[i, :len(row)] = row.float().cpu()
    return out.to(device)


def split_rows_by_budget(lengths: list[int], budget: Optional[int]) -> list[list[int]]:
    """Consecutive rows grouped so each group's tokens stay under the budget (a longer row goes alone)."""
    if not budget:
        return [list(range(len(lengths)))]
    groups, current, used = [], [], 0
    for i, length in enumerate(lengths):
        if current and used + length > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += length
    return groups + ([current] if current else [])


class PromptBatches(torch.utils.data.Dataset):
    """The prompts in one seeded order, each accumulation window's prompts repeated num_iterations times in a row,
    so the steps that reuse a window's completions are handed the same prompts (read with a sequential sampler)."""

    def __init__(self, items: list[dict], window: int, num_iterations: int, seed: int):
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        self.index = []
        for start in range(0, len(order), window):
            self.index += order[start:start + window] * num_iterations
        self.items = items

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> dict:
        return self.items[self.index[position]]


def reward_label(spec: str) -> str:
    """A reward's name in logs: a built-in's name, or the function name of `package.module:function`."""
    return spec.rsplit(":", 1)[-1]


def keep_prompts(rows: list[dict]) -> dict:
    """The collator: a step's prompts stay Python objects until the trainer samples completions for them."""
    return {"prompts": rows}


# ------------------------------------------------------------------------------------------------ the trainer


class RLTrainer(DojoTrainer):
    """A Trainer whose training_step samples completions, scores them and takes a policy-gradient step."""

    def __init__(self, *args, rl, beta: float, rewards: Optional[RewardSet], stop_ids: list[int], teacher=None,
                 ref_model=None, heldout: Optional[list[dict]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rl, self.beta, self.rewards, self.stop_ids = rl, beta, rewards, stop_ids
        self.teacher, self.ref_model, self.heldout = teacher, ref_model, heldout
        self.loss_is_scaled_for_ga = False  # each step's loss is a mean; the Trainer averages the window's steps
        self.experience: dict[int, dict] = {}  # call in the accumulation window → its sampled, scored completions
        self.calls = 0
        self.completion_tokens_seen = 0
        self.metric_sums: dict[str, float] = defaultdict(float)

    # ---- one step ----------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        window = self.args.gradient_accumulation_steps
        slot = self.calls % window
        self.calls += 1
        # A new window of completions every num_iterations optimizer steps (and after a resume, when none is kept).
        if self.state.global_step % self.rl.num_iterations == 0 or slot not in self.experience:
            self.experience[slot] = self.make_experience(model, inputs["prompts"])
        experience = self.experience[slot]
        self.real_tokens_seen += experience["tokens"]
        self.samples_seen += experience["rows"]
        self.completion_tokens_seen += int(experience["completion_mask"].sum())
        active = self.rows_that_learn(experience)
        self.add_metrics({"skipped_rows_share": [1 - len(active) / experience["rows"]]})
        if not active:  # every advantage is 0 and there is no KL term: the loss and its gradient are exactly 0
            return self.zero_step(model)
        lengths = [experience["row_lengths"][i] for i in active]
        parts = [[active[i] for i in group] for group in
                 split_rows_by_budget(lengths, getattr(self.args, "micro_batch_tokens", None))]
        loss = None
        for index, rows in enumerate(parts):
            last = index == len(parts) - 1
            part = self.part_of(experience, rows)
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                part_loss = super(DojoTrainer, self).training_step(model, part, None)
            loss = part_loss if loss is None else loss + part_loss
        return loss

    def rows_that_learn(self, experience: dict) -> list[int]:
        """The completions whose loss can be non-zero. With β = 0 a completion whose advantage is 0 at every token
        contributes exactly 0 to the loss and to the gradient, clipped or not, so its forward and backward are
        skipped; it still counts in the normaliser (part_of's shares use every row), so the result is unchanged.
        Groups of equal rewards are common in GRPO (`frac_reward_zero_std`). Several processes must run the same
        backward passes, so there every row runs."""
        rows = experience["rows"]
        if self.beta or self.accelerator.num_processes > 1:
            return list(range(rows))
        advantages = experience["advantages"]
        moving = advantages != 0 if advantages.dim() == 1 else (advantages != 0).any(dim=1)
        return moving.nonzero().flatten().tolist()

    def zero_step(self, model) -> torch.Tensor:
        """A step without a forward pass: zero gradients (not None, so the optimizer steps exactly as it would on
        a zero gradient: AdamW's moments still decay and move the weights)."""
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        return torch.zeros((), device=self.args.device)

    def part_of(self, experience: dict, rows: list[int]) -> dict:
        """Some rows of the experience, cut to their own widths, with the share of the loss they carry."""
        index = torch.tensor(rows, device=experience["input_ids"].device)
        width = int(experience["attention_mask"][index].sum(1).max())
        longest = int(experience["completion_mask"][index].sum(1).max())
        part = {}
        for key in ("input_ids", "attention_mask", "labels"):
            part[key] = experience[key][index, :width]
        for key in ("completion_mask", "advantages", "old_logps", "ref_logps"):
            value = experience.get(key)
            if value is not None:
                part[key] = value[index][:, :longest] if value.dim() == 2 else value[index]
        # The loss of a part is the mean the loss type takes over its own rows or tokens; weighting it by its share
        # of those rows (grpo, dr_grpo) or tokens (bnpo, dapo) makes the parts add up to the loss of all the rows.
        if self.rl.rl_loss_type in ("grpo", "dr_grpo"):
            share = len(rows) / experience["rows"]
        else:
            share = float(part["completion_mask"].sum()) / max(1.0, float(experience["completion_mask"].sum()))
        part["share"] = share
        return part

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rl = self.rl
        logps = completion_logps(model, inputs, rl.temperature)
        mask = inputs["completion_mask"]
        old_logps = inputs.get("old_logps")
        loss = policy_loss(logps, old_logps, inputs["advantages"], mask, loss_type=rl.rl_loss_type,
                           epsilon_low=rl.epsilon, epsilon_high=rl.epsilon_high if rl.epsilon_high is not None
                           else rl.epsilon, ref_logps=inputs.get("ref_logps"), beta=self.beta,
                           max_completion_length=rl.max_completion_length) * inputs["share"]
        with torch.no_grad():
            self.add_clip_and_kl_metrics(logps.detach(), old_logps, inputs, mask)
        return (loss, None) if return_outputs else loss

    # ---- sampling and scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, model, prompts: list[dict]) -> dict:
        """Sample completions for the prompts, score them, and compute advantages (and old / reference /
        teacher log-probs where the settings need them)."""
        rl, n = self.rl, self.rl.num_generations
        policy = self.accelerator.unwrap_model(model)
        started = time.time()
        rollout = sample_completions(policy, self.processing_class, [p["prompt_ids"] for p in prompts],
                                     num_generations=n, max_new_tokens=rl.max_completion_length,
                                     stop_ids=self.stop_ids, temperature=rl.temperature, top_p=rl.top_p)
        generation_seconds = time.time() - started
        device = self.args.device
        batch = completion_batch(rollout.prompt_ids, rollout.completion_ids, self.processing_class.pad_token_id,
                                 device)
        rows = len(rollout.completion_ids)
        metrics = {"completions/mean_length": [float(len(c)) for c in rollout.completion_ids],
                   "completions/clipped_ratio": [0.0 if s else 1.0 for s in rollout.stopped]}
        if rl.advantage == "kd":
            advantages = torch.zeros(rows, device=device)
        else:
            totals, per_function = self.score(prompts, rollout, n)
            advantages = (rloo_advantages(totals, n) if rl.advantage == "rloo"
                          else group_advantages(totals, n, scale=rl.scale_rewards)).to(device)
            group_std = totals.view(-1, n).std(dim=1)
            metrics.update({"reward": totals.tolist(), "reward_std": group_std.tolist(),
                            "frac_reward_zero_std": (group_std < 1e-6).double().tolist()})
            for name, values in per_function.items():
                metrics[f"rewards/{reward_label(name)}/mean"] = [v for v in values.tolist() if not math.isnan(v)]
        old_logps = ref_logps = None
        needs_old = rl.num_iterations > 1 or self.teacher is not None
        if needs_old:
            policy.eval()
            old_logps = completion_logps(policy, batch, rl.temperature)
            policy.train()
        if self.beta:
            with self.reference(policy) as reference:
                ref_logps = completion_logps(reference, batch, rl.temperature)
        mask = batch["completion_mask"]
        if self.teacher is not None:
            teacher = self.teacher.completion_logps(rollout.prompt_ids,
                                                    [list(c) for c in rollout.completion_ids])
            teacher_logps = padded_rows(teacher, mask.shape[1], device)
            gap = (teacher_logps - old_logps) * mask  # how much likelier the teacher finds each sampled token
            coef = rl.kd_coef if rl.kd_coef else 1.0
            advantages = advantages[:, None] * mask + coef * gap
            metrics["kd/teacher_minus_policy"] = [float(gap.sum() / mask.sum().clamp(min=1))]
        if rl.num_iterations == 1:
            old_logps = None  # on-policy: the ratio is exactly 1 (the loss detaches the current log-probs)
        self.add_metrics(metrics)
        self.add_metrics({"timing/generation_s": [generation_seconds]})
        return {**batch, "advantages": advantages, "old_logps": old_logps, "ref_logps": ref_logps, "rows": rows,
                "row_lengths": batch["attention_mask"].sum(1).tolist(),
                "tokens": int(batch["attention_mask"].sum())}

    def score(self, prompts: list[dict], rollout: Rollout, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted reward of every completion (n per prompt) and each function's values (NaN: abstained)."""
        rows = [prompt for prompt in prompts for _ in range(n)]
        texts = [self.completion_text(ids) for ids in rollout.completion_ids]
        columns = {name: [row["columns"].get(name) for row in rows] for name in {k for p in prompts for k in p["columns"]}}
        return self.rewards(completions=[[{"role": "assistant", "content": text}] for text in texts],
                            prompts=[row["messages"] for row in rows], columns=columns,
                            completion_ids=rollout.completion_ids)

    def completion_text(self, ids: list[int]) -> str:
        """The answer's text, without its stop token."""
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.processing_class.decode(ids, skip_special_tokens=True)

    @contextlib.contextmanager
    def reference(self, policy):
        """The reference: a frozen copy (full fine-tuning), else the policy with its adapter off, in eval mode."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                yield policy
        finally:
            policy.train(was_training)

    # ---- held-out reward ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def heldout_reward(self, items: list[dict], batch_size: int = 16) -> dict:
        """Held-out prompts scored two ways: `reward` is the mean over num_generations sampled completions per
        prompt (the policy's expected reward, the quantity RL raises), `reward_greedy` one greedy answer each."""
        policy = self.accelerator.unwrap_model(self.model)
        rl = self.rl
        results, answers = {}, []
        for mode, n in (("sampled", rl.num_generations), ("greedy", 1)):
            totals, per_function = [], defaultdict(list)
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                rollout = sample_completions(policy, self.processing_class, [p["prompt_ids"] for p in chunk],
                                             num_generations=n, max_new_tokens=rl.max_completion_length,
                                             stop_ids=self.stop_ids, temperature=rl.temperature, top_p=rl.top_p,
                                             greedy=mode == "greedy")
                total, values = self.score(chunk, rollout, n)
                totals += total.tolist()
                for name, column in values.items():
                    per_function[reward_label(name)] += [v for v in column.tolist() if not math.isnan(v)]
                if mode == "greedy":
                    answers += [self.completion_text(ids) for ids in rollout.completion_ids]
            suffix = "" if mode == "sampled" else "_greedy"
            results["reward" + suffix] = sum(totals) / len(totals)
            results.update({f"rewards/{k}/mean{suffix}": sum(v) / len(v) for k, v in per_function.items() if v})
        return {"metrics": results, "answers": answers}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The held-out prompts' mean reward, sampled and greedy (a loss on sampled text has no fixed target)."""
        if not self.heldout or self.rewards is None:
            return {}
        measured = self.heldout_reward(self.heldout)["metrics"]
        logs = {f"{metric_key_prefix}_{k}": round(v, 6) for k, v in measured.items()}
        self.log(logs)
        return logs

    # ---- metrics ------------------------------------------------------------------------------------------------
    def add_clip_and_kl_metrics(self, logps, old_logps, inputs, mask) -> None:
        rl, count = self.rl, mask.sum().clamp(min=1)
        if old_logps is not None:
            ratio = torch.exp(logps - old_logps)
            advantages = inputs["advantages"]
            advantages = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(ratio)
            high = rl.epsilon_high if rl.epsilon_high is not None else rl.epsilon
            low_clipped = (ratio < 1 - rl.epsilon) & (advantages < 0)
            high_clipped = (ratio > 1 + high) & (advantages > 0)
            self.add_metrics({"clip_ratio/low": [float((low_clipped * mask).sum() / count)],
                              "clip_ratio/high": [float((high_clipped * mask).sum() / count)]})
        if inputs.get("ref_logps") is not None:
            difference = inputs["ref_logps"] - logps
            k3 = torch.exp(difference) - difference - 1
            self.add_metrics({"kl": [float((k3 * mask).sum() / count)]})

    def add_metrics(self, values: dict[str, list[float]]) -> None:
        """Sums and counts until the next log, so each logged value is a mean over completions (or steps)."""
        for name, items in values.items():
            self.metric_sums[name] += float(sum(items))
            self.metric_sums[name + "#count"] += len(items)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: the means since the previous one
            sums = self.metric_sums
            names = [name for name in sums if not name.endswith("#count")]
            if names and self.accelerator.num_processes > 1:
                totals = torch.tensor([[sums[n], sums[n + "#count"]] for n in names], device=self.args.device)
                totals = self.accelerator.reduce(totals, reduction="sum").tolist()
            else:
                totals = [[sums[n], sums[n + "#count"]] for n in names]
            for name, (total, count) in zip(names, totals):
                if count:
                    logs[name] = round(total / count, 6)
            sums.clear()
        super().log(logs, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ the recipe


def build_teacher(config):
    """A local teacher (model, optional adapter; eval mode, frozen) or a server's, or None."""
    rl = config.rl
    if rl.teacher_url:
        from llm_dojo.rollout.teacher import ServerTeacher

        logger.info("teacher: the server at %s (/v1/completions with echo)", rl.teacher_url)
        return ServerTeacher(rl.teacher_url)
    if not rl.teacher_model:
        return None
    from llm_dojo.rollout.teacher import LocalTeacher

    model = load_model(rl.teacher_model, dtype=parse_dtype(config.model.model_dtype),
                       trust_remote_code=config.model.trust_remote_code)
    if rl.teacher_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, rl.teacher_adapter)
    model.eval().requires_grad_(False).to(config.training.device)
    logger.info("teacher: %s%s (local)", rl.teacher_model, f" + {rl.teacher_adapter}" if rl.teacher_adapter else "")
    return LocalTeacher(model)


def train_rl(config, return_model: bool = False):
    """Run one stage: grpo job and return a summary (rewards before/after, losses, timings)."""
    from transformers import set_seed

    from llm_dojo.recipes.preference import frozen_reference_copy
    from llm_dojo.recipes.sft import (TrainingInterrupted, adjust_training_arguments, config_for_saving,
                                      load_trainable_model, run_summary, save_run, training_callbacks)

    args, rl = config.training, config.rl
    # Completions are scored in padded rows (prompt + completion each) and sampled from left-padded prompts: both
    # need the model's own attention with its padding mask, not the packed rows' per-sample attention.
    config.data.packing = False
    check_model(config.model.model_name_or_path)
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    set_seed(args.seed)
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    chat_format = resolve_chat_format(tokenizer, config.data.template_name)
    prompts = prepare_prompts(config.data, rl, tokenizer, args.seed)
    rewards = None
    if rl.advantage != "kd" or rl.reward_funcs:
        rewards = RewardSet.from_config(
            [s.strip() for s in (rl.reward_funcs or "").split(",") if s.strip()],
            [float(w) for w in rl.reward_weights.split(",")] if rl.reward_weights else None,
            format_pattern=rl.reward_format_pattern, max_completion_length=rl.max_completion_length,
            overlong_cache=rl.overlong_cache)
    resume = checkpoint_to_resume(args.resume_from_checkpoint, args.output_dir)
    adjust_training_arguments(config)
    args.train_sampling_strategy = "sequential"  # PromptBatches already holds the seeded order
    beta = config.stage.resolved_beta()
    teacher = build_teacher(config)
    model = load_trainable_model(config)
    resolved_config = config_for_saving(config)
    ref_model = frozen_reference_copy(model) if beta and config.model.train_mode == "full" else None
    stop_ids = stop_token_ids(tokenizer, model, chat_format)
    window = args.per_device_train_batch_size * args.gradient_accumulation_steps
    trainer = RLTrainer(
        model=model, args=args, train_dataset=PromptBatches(prompts.train, window, rl.num_iterations, args.seed),
        eval_dataset=ListDataset(prompts.eval) if prompts.eval else None,
        data_collator=keep_prompts, processing_class=tokenizer, optimizers=(build_optimizer(model, config), None),
        callbacks=training_callbacks(args), rl=rl, beta=beta, rewards=rewards, stop_ids=stop_ids, teacher=teacher,
        ref_model=ref_model, heldout=prompts.eval)
    before = trainer.heldout_reward(prompts.eval) if prompts.eval and rewards is not None else None
    if before:
        logger.info("held-out reward before training: %s", before["metrics"])
    started, interrupted = time.time(), False
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.time() - started
    data = SimpleNamespace(train=prompts.train, eval=prompts.eval, chat_format=chat_format,
                           stats=SimpleNamespace(tokens=trainer.real_tokens_seen,
                                                 trained_tokens=trainer.completion_tokens_seen))
    summary = run_summary(trainer, data, seconds, interrupted)
    summary.update(stage="grpo", beta=beta, advantage=rl.advantage, resumed_from=resume)
    if before:
        after = trainer.heldout_reward(prompts.eval)
        summary["heldout_reward_before"] = before["metrics"]
        summary["heldout_reward_after"] = after["metrics"]
        summary["heldout_answers_before"] = before["answers"][:8]
        summary["heldout_answers_after"] = after["answers"][:8]
        logger.info("held-out reward after training: %s", after["metrics"])
    rewards_logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    if rewards_logged:
        summary["last_logged_reward"] = rewards_logged[-1]["reward"]
    save_run(trainer, config, tokenizer, data, resolved_config, summary)
    if interrupted:
        raise TrainingInterrupted(trainer.state.global_step, trainer.state.max_steps, args.output_dir)
    from llm_dojo.eval.hook import eval_after_training

    eval_after_training(config, trainer.model, tokenizer, data.chat_format, summary)  # config key eval_after_training
    return (summary, trainer.model) if return_model else summary
