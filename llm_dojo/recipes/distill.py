"""Knowledge distillation (stage: distill), top to bottom: config → SFT data → student (+ teacher) → Trainer with
the generalised JSD loss of GKD → saved adapter. `dojo train CONFIG.yaml stage=distill teacher_model=…` lands here.

Per batch:
1. with probability `lmbda` the batch is made on-policy: each sample keeps its prompt (everything before its first
   trained token) and the student samples its own answer (GKD's on-policy share; the rest train on the data's
   answers, as in SFT);
2. the student's and the teacher's logits at the trained positions only (the answer tokens and terminators);
3. llm_tricks/rl/gkd.py's generalised JSD between the two next-token distributions (β 0: forward KL, β 1:
   reverse KL, between: the mixture), summed over the trained tokens and divided by their count in the batch.
The teacher must share the student's tokenizer (the distributions are compared token id by token id).
"""

from __future__ import annotations

import logging
import random
import time

import torch

from llm_dojo.data.batching import PaddedCollator
from llm_dojo.data.encode import IGNORE_INDEX
from llm_dojo.data.store import open_training_data
from llm_dojo.infer.common import stop_token_ids
from llm_dojo.loss import NOT_MODEL_INPUTS, positions_to_keep
from llm_dojo.models.adapters import build_optimizer
from llm_dojo.models.loading import load_tokenizer
from llm_dojo.preflight import check_model, check_output_dir
from llm_dojo.recipes.checkpoints import checkpoint_to_resume
from llm_dojo.recipes.rl import completion_batch
from llm_dojo.recipes.trainer import CountingCollator, DojoTrainer
from llm_dojo.rollout.generate import sample_completions
from llm_tricks.rl import generalized_jsd_loss

logger = logging.getLogger(__name__)


def prompts_of(batch: dict) -> list[list[int]]:
    """Each padded row's tokens before its first trained label: the prompt its answer continues."""
    prompts = []
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        first = next((t for t, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        prompts.append(ids[:first])
    return prompts


class DistillTrainer(DojoTrainer):
    """DojoTrainer whose loss is the generalised JSD between the student's and the teacher's distributions."""

    def __init__(self, *args, teacher, beta: float, rl, stop_ids: list[int], seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.beta, self.rl, self.stop_ids = teacher, beta, rl, stop_ids
        self.loss_is_scaled_for_ga = False  # a batch's loss is its own token mean; the Trainer averages the window
        self.coin = random.Random(seed)      # which batches go on-policy: reproducible
        self.on_policy_batches = self.batches = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.batches += 1
        if self.rl.lmbda and self.coin.random() < self.rl.lmbda:
            inputs = self.on_policy(model, inputs)
            self.on_policy_batches += 1
        trained = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        return super().training_step(model, inputs, max(1, trained))

    @torch.no_grad()
    def on_policy(self, model, inputs: dict) -> dict:
        """The same prompts, answered by the student itself."""
        policy = self.accelerator.unwrap_model(model)
        prompts = prompts_of(inputs)
        rollout = sample_completions(policy, self.processing_class, prompts, num_generations=1,
                                     max_new_tokens=self.rl.max_completion_length, stop_ids=self.stop_ids,
                                     temperature=self.rl.temperature, top_p=self.rl.top_p)
        batch = completion_batch(rollout.prompt_ids, rollout.completion_ids, self.processing_class.pad_token_id,
                                 inputs["input_ids"].device)
        batch.pop("completion_mask")
        lengths = batch["attention_mask"].sum(1)
        return {**batch, "row_lengths": lengths, "num_real_tokens": lengths.sum(),
                "num_samples": torch.tensor(len(prompts))}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        keep = positions_to_keep(inputs["labels"])
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        student = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits.float()
        with torch.no_grad():
            teacher = self.teacher(**model_inputs, logits_to_keep=keep, use_cache=False).logits.float()
        total = generalized_jsd_loss(student, teacher, beta=self.beta, temperature=self.rl.temperature,
                                     reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else max(1, int(keep.sum()))
        loss = total / count
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self.batches:
            logs["on_policy_share"] = round(self.on_policy_batches / self.batches, 4)
        super().log(logs, *args, **kwargs)


def load_teacher(config, student_vocab: int):
    """The teacher model (and adapter) frozen in eval mode; its vocabulary must be the student's."""
    from llm_dojo.models.loading import load_model, parse_dtype
    from llm_dojo.data.sources import DataError

    rl = config.rl
    teacher = load_model(rl.teacher_model, dtype=parse_dtype(config.model.model_dtype),
                         trust_remote_code=config.model.trust_remote_code)
    if rl.teacher_adapter:
        from peft import PeftModel

        teacher = PeftModel.from_pretrained(teacher, rl.teacher_adapter)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if vocab != student_vocab:
        raise DataError(f"teacher_model {rl.teacher_model} predicts {vocab} token ids and the student "
                        f"{student_vocab}: distillation compares distributions id by id, so both need one tokenizer")
    return teacher.eval().requires_grad_(False)


def train_distill(config, return_model: bool = False):
    """Run one stage: distill job and return a summary."""
    from transformers import set_seed

    from llm_dojo.recipes.sft import (TrainingInterrupted, adjust_training_arguments, config_for_saving,
                                      load_trainable_model, run_summary, save_run, training_callbacks)

    args = config.training
    check_model(config.model.model_name_or_path)
    check_model(config.rl.teacher_model)
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    set_seed(args.seed)
    if config.data.packing:
        # On-policy batches are rebuilt from each sample's prompt, one sample per row; the data's batches are
        # kept in the same shape so both kinds run through one loss.
        logger.info("stage distill trains unpacked rows (packing: false)")
        config.data.packing = False
    tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
    data = open_training_data(config.data, tokenizer, args.seed, args)
    resume = checkpoint_to_resume(args.resume_from_checkpoint, args.output_dir)
    adjust_training_arguments(config)
    model = load_trainable_model(config)
    teacher = load_teacher(config, model.get_output_embeddings().weight.shape[0]).to(model.device)
    resolved_config = config_for_saving(config)
    beta = config.stage.resolved_beta()
    trainer = DistillTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=CountingCollator(PaddedCollator(tokenizer.pad_token_id)), processing_class=tokenizer,
        optimizers=(build_optimizer(model, config), None), callbacks=training_callbacks(args),
        teacher=teacher, beta=beta, rl=config.rl, stop_ids=stop_token_ids(tokenizer, model, data.chat_format),
        seed=args.seed)
    started, interrupted = time.time(), False
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.time() - started
    summary = run_summary(trainer, data, seconds, interrupted)
    summary.update(stage="distill", beta=beta, lmbda=config.rl.lmbda, resumed_from=resume,
                   on_policy_batches=trainer.on_policy_batches)
    save_run(trainer, config, tokenizer, data, resolved_config, summary)
    if interrupted:
        raise TrainingInterrupted(trainer.state.global_step, trainer.state.max_steps, args.output_dir)
    from llm_dojo.eval.hook import eval_after_training

    eval_after_training(config, trainer.model, tokenizer, data.chat_format, summary)  # config key eval_after_training
    return (summary, trainer.model) if return_model else summary
