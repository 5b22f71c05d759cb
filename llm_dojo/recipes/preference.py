"""Preference training (stage: dpo | simpo | orpo | kto), top to bottom: config → pairs → model (+ reference) →
Trainer → saved adapter. `dojo train CONFIG.yaml stage=dpo` lands here (sft.train hands over).

Per batch, for every sample (each side of a pair, each KTO example and its KL sample):
1. the policy's log-probability of the trained tokens, summed per sample (`sample_logps`; packed rows, logits
   only at trained positions, the same chat format and masks as SFT);
2. for dpo and kto, the reference's — the same model with the adapter switched off and in eval mode (adapter
   training: no second copy), a frozen eval-mode copy (full training), or numbers computed once before training
   (`precompute_ref_log_probs: true`);
3. the loss from llm_tricks/preference (from scratch, proven equal to TRL's in tests/test_preference_losses.py),
   summed over the units of this micro-batch and divided by the units of the whole accumulation window.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import defaultdict
from typing import Optional

import torch

from llm_dojo.data.pair_batching import PreferenceCollator, split_units_by_budget
from llm_dojo.data.preference import prepare_preference_data
from llm_dojo.loss import positions_to_keep
from llm_dojo.models.adapters import build_optimizer
from llm_dojo.models.loading import load_tokenizer
from llm_dojo.preflight import check_model, check_output_dir
from llm_dojo.recipes.checkpoints import checkpoint_to_resume
from llm_dojo.recipes.outputs import ListDataset
from llm_dojo.recipes.trainer import DojoTrainer
from llm_tricks.preference import dpo_loss, kto_loss, logps_of_targets, orpo_loss, simpo_loss

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")
STAGES_WITH_REFERENCE = ("dpo", "kto")


def sample_logps(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs of each sample's trained tokens, their count), indexed by sample id (pair_batching)."""
    labels = inputs["labels"]
    keep = positions_to_keep(labels)  # positions whose next token is trained: only these get logits
    outputs = model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs}, logits_to_keep=keep, use_cache=False)
    targets = labels[:, 1:][keep[:, :-1]]
    owners = inputs["sample_index"][:, 1:][keep[:, :-1]]  # the sample each trained token belongs to
    token_logps = logps_of_targets(outputs.logits, targets)
    size = int(inputs["sample_index"].max()) + 1
    sums = token_logps.new_zeros(size).index_add(0, owners, token_logps)
    return sums, torch.bincount(owners, minlength=size)


def units_present(inputs: dict) -> torch.Tensor:
    """The units (pairs, or KTO examples) whose samples are in this micro-batch, in order."""
    ids = inputs["sample_index"]
    ids = ids[ids >= 0]
    if "desirable" in inputs:  # kto: example i is sample i, its KL sample n + i
        return torch.unique(ids[ids < len(inputs["desirable"])])
    return torch.unique(ids // 2)


class PreferenceTrainer(DojoTrainer):
    """DojoTrainer (token budget, counts, loss scale under DDP) with a preference loss instead of the token loss."""

    def __init__(self, *args, stage, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.beta = stage.resolved_beta()
        self.ref_model = ref_model
        self.metric_sums = {"train": defaultdict(float), "eval": defaultdict(float)}

    # ---- batches: whole units per micro-batch, the loss normalised by units -------------------------------------
    def micro_batches(self, inputs: dict, budget: Optional[int]) -> list[dict]:
        return split_units_by_budget(inputs, budget) if budget else [inputs]

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The loss is a mean over units (pairs / KTO examples) of the whole accumulation window (and processes)."""
        count = sum(int(batch["num_units"]) for batch in batch_samples)
        count = torch.tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    # ---- the reference ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self, model):
        """The reference model: a frozen copy if there is one, else the policy with its adapter off, in eval mode
        (dropout off), restored afterwards."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        # Without an adapter (full fine-tuning) the policy itself is the reference only before its first update:
        # that is when precompute_reference runs; during training, full fine-tuning has self.ref_model.
        has_adapter = hasattr(unwrapped, "disable_adapter")
        switched_off = unwrapped.disable_adapter() if has_adapter else contextlib.nullcontext()
        try:
            with switched_off:
                yield unwrapped
        finally:
            unwrapped.train(was_training)

    @torch.no_grad()
    def reference_logps(self, model, inputs: dict) -> torch.Tensor:
        with self.reference(model) as reference:
            sums, _ = sample_logps(reference, inputs)
        return sums

    def precompute_reference(self, items: list[dict], batch_size: int) -> None:
        """Score every example with the reference once and store the numbers in it (precompute_ref_log_probs)."""
        collator = self.data_collator.collator  # the PreferenceCollator inside CountingCollator
        model = self.model
        started = time.time()
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = self._prepare_inputs(collator(chunk))
            sums = self.reference_logps(model, batch).double().cpu()
            for i, item in enumerate(chunk):
                if self.stage.stage == "kto":
                    item["ref_logps"], item["ref_kl_logps"] = float(sums[i]), float(sums[len(chunk) + i])
                else:
                    item["ref_chosen_logps"], item["ref_rejected_logps"] = float(sums[2 * i]), float(sums[2 * i + 1])
        logger.info("reference log-probs of %d examples computed in %.1f s", len(items), time.time() - started)

    # ---- the loss -----------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        units = units_present(inputs)
        sums, counts = sample_logps(model, inputs)
        if self.stage.stage == "kto":
            losses = self.kto_losses(model, inputs, units, sums, mode)
        else:
            losses = self.pair_losses(model, inputs, units, sums, counts, mode)
        denominator = num_items_in_batch if num_items_in_batch is not None else len(units)
        if torch.is_tensor(denominator):
            denominator = denominator.to(losses.device)
        loss = losses.sum() / denominator
        if (self.args.average_tokens_across_devices and num_items_in_batch is not None
                and self.accelerator.num_processes > 1):
            loss = loss * self.accelerator.num_processes  # see DojoTrainer.compute_loss
        return (loss, None) if return_outputs else loss

    def pair_losses(self, model, inputs, pairs, sums, counts, mode) -> torch.Tensor:
        stage, beta = self.stage, self.beta
        chosen, rejected = sums[2 * pairs], sums[2 * pairs + 1]
        chosen_count, rejected_count = counts[2 * pairs], counts[2 * pairs + 1]
        nll = None
        if stage.stage == "dpo":
            if "ref_chosen_logps" in inputs:
                ref_chosen = inputs["ref_chosen_logps"][pairs].to(chosen.dtype)
                ref_rejected = inputs["ref_rejected_logps"][pairs].to(chosen.dtype)
            else:
                ref_sums = self.reference_logps(model, inputs)
                ref_chosen, ref_rejected = ref_sums[2 * pairs], ref_sums[2 * pairs + 1]
            scored = (chosen, rejected, ref_chosen, ref_rejected)
            if stage.dpo_loss_type == "ipo":  # IPO compares per-token means (as TRL does)
                scored = (chosen / chosen_count, rejected / rejected_count, ref_chosen / chosen_count,
                          ref_rejected / rejected_count)
            losses, chosen_rewards, rejected_rewards = dpo_loss(*scored, beta=beta, loss_type=stage.dpo_loss_type,
                                                                label_smoothing=stage.label_smoothing)
        elif stage.stage == "simpo":
            losses, chosen_rewards, rejected_rewards = simpo_loss(
                chosen / chosen_count, rejected / rejected_count, beta=beta,
                gamma_beta_ratio=stage.gamma_beta_ratio, label_smoothing=stage.label_smoothing)
        elif stage.stage == "orpo":
            losses, chosen_rewards, rejected_rewards = orpo_loss(chosen / chosen_count, rejected / rejected_count,
                                                                 beta=beta)
            nll = -chosen / chosen_count  # ORPO trains the chosen answer too: its per-token NLL, per pair
            losses = losses + nll
        else:
            raise ValueError(f"stage {stage.stage!r} is not a paired preference stage")
        self.add_metrics(mode, len(pairs), {
            "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).double(),
            "logps/chosen": chosen.detach(), "logps/rejected": rejected.detach(),
            **({"nll_loss": nll.detach()} if nll is not None else {}),
        })
        return losses

    def kto_losses(self, model, inputs, examples, sums, mode) -> torch.Tensor:
        n = len(inputs["desirable"])
        logps, kl_logps = sums[examples], sums[n + examples]
        if "ref_logps" in inputs:
            ref_logps = inputs["ref_logps"][examples].to(logps.dtype)
            ref_kl_logps = inputs["ref_kl_logps"][examples].to(logps.dtype)
        else:
            ref_sums = self.reference_logps(model, inputs)
            ref_logps, ref_kl_logps = ref_sums[examples], ref_sums[n + examples]
        desirable = inputs["desirable"][examples].to(logps.device)
        losses, chosen_rewards, rejected_rewards, kl = kto_loss(
            logps[desirable], logps[~desirable], kl_logps, ref_logps[desirable], ref_logps[~desirable], ref_kl_logps,
            beta=self.beta, desirable_weight=self.stage.desirable_weight,
            undesirable_weight=self.stage.undesirable_weight)
        metrics = {"kl": kl.expand(len(examples))}
        if len(chosen_rewards):
            metrics.update({"rewards/chosen": chosen_rewards, "logps/chosen": logps[desirable].detach()})
        if len(rejected_rewards):
            metrics.update({"rewards/rejected": rejected_rewards, "logps/rejected": logps[~desirable].detach()})
        self.add_metrics(mode, len(examples), metrics)
        return losses

    # ---- metrics ------------------------------------------------------------------------------------------------
    def add_metrics(self, mode: str, units: int, values: dict[str, torch.Tensor]) -> None:
        """Keep sums and counts of each metric until the next log, so the logged value is a mean over units."""
        sums = self.metric_sums[mode]
        for name, value in values.items():
            sums[name] += float(value.sum())
            sums[name + "#count"] += value.numel()

    def log(self, logs: dict, *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        sums = self.metric_sums[mode]
        names = [name for name in sums if not name.endswith("#count")]
        if names and self.accelerator.num_processes > 1:
            totals = torch.tensor([[sums[n], sums[n + "#count"]] for n in names], device=self.args.device)
            totals = self.accelerator.reduce(totals, reduction="sum").tolist()
        else:
            totals = [[sums[n], sums[n + "#count"]] for n in names]
        prefix = "eval_" if mode == "eval" else ""
        for name, (total, count) in zip(names, totals):
            if count:
                logs[prefix + name] = round(total / count, 6)
        if "rewards/chosen" in names and "rewards/rejected" in names and "rewards/margins" not in names:
            # kto: the margin of the two means (its examples are not pairs)
            margin = logs[prefix + "rewards/chosen"] - logs[prefix + "rewards/rejected"]
            logs[prefix + "rewards/margins"] = round(margin, 6)
        sums.clear()
        super().log(logs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def frozen_reference_copy(model):
    """Full fine-tuning: the reference is a copy of the starting weights, frozen and in eval mode."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def train_preference(config, return_model: bool = False):
    """Run one preference-training job and return a summary (losses, rewards, timings)."""
    from transformers import set_seed

    from llm_dojo.recipes.sft import (TrainingInterrupted, adjust_training_arguments, config_for_saving,
                                      load_trainable_model, run_summary, save_run, training_callbacks)
    from llm_dojo.recipes.trainer import CountingCollator

    args, stage = config.training, config.stage
    check_model(config.model.model_name_or_path)
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    set_seed(args.seed)
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    data = prepare_preference_data(config.data, stage.stage, tokenizer, args.seed)
    resume = checkpoint_to_resume(args.resume_from_checkpoint, args.output_dir)
    adjust_training_arguments(config)
    args.train_sampling_strategy = "random"  # units are packed per batch; length grouping reads SFT's columns
    model = load_trainable_model(config)
    resolved_config = config_for_saving(config)
    needs_reference = stage.stage in STAGES_WITH_REFERENCE
    ref_model = None
    if needs_reference and config.model.train_mode == "full" and not stage.precompute_ref_log_probs:
        ref_model = frozen_reference_copy(model)
        logger.info("reference: a frozen copy of the starting weights (full fine-tuning)")
    elif needs_reference:
        logger.info("reference: %s", "computed once before training" if stage.precompute_ref_log_probs
                    else "the base model with the adapter switched off")
    # Rows of up to max_len tokens, as in SFT; a unit (a pair, or a KTO example with its KL sample) whose two
    # samples are longer together gets a row of its own.
    collator = PreferenceCollator(tokenizer.pad_token_id, capacity=config.data.max_len,
                                  packing=config.data.packing, kto=stage.stage == "kto")
    trainer = PreferenceTrainer(
        model=model, args=args, train_dataset=ListDataset(data.train),
        eval_dataset=ListDataset(data.eval) if data.eval else None,
        data_collator=CountingCollator(collator), processing_class=tokenizer,
        optimizers=(build_optimizer(model, config), None), callbacks=training_callbacks(args),
        stage=stage, ref_model=ref_model)
    if needs_reference and stage.precompute_ref_log_probs:
        for items in (data.train, data.eval or []):
            trainer.precompute_reference(items, args.per_device_train_batch_size)
    started, interrupted = time.time(), False
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.time() - started
    summary = run_summary(trainer, data, seconds, interrupted)
    summary.update(stage=stage.stage, beta=trainer.beta, resumed_from=resume)
    logged = [entry for entry in trainer.state.log_history if "rewards/chosen" in entry]
    if logged:
        summary["last_logged_rewards"] = {k: v for k, v in logged[-1].items() if k.startswith(("rewards/", "logps/"))}
    save_run(trainer, config, tokenizer, data, resolved_config, summary)
    if interrupted:
        raise TrainingInterrupted(trainer.state.global_step, trainer.state.max_steps, args.output_dir)
    from llm_dojo.eval.hook import eval_after_training

    eval_after_training(config, trainer.model, tokenizer, data.chat_format, summary)  # config key eval_after_training
    return (summary, trainer.model) if return_model else summary
