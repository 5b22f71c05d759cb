"""The four runs of `dojo bench` (see llm_dojo/bench.py), each called inside its own subprocess, and what they share.

Every run trains the same model, data and LoRA with its own stack and returns the same keys; tokens are counted
for all of them by one instrument (TokenCounter), and the saved adapters are scored by one function
(heldout_eval).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from llm_dojo.bench import BenchSettings

# SmolLM2's official template with TRL's `{% generation %}` markers around each assistant answer and its
# <|im_end|>: TRL cannot patch this template itself ("patching is not supported for this template"), and its
# assistant-only loss needs the markers. `_check_same_rendering` proves it renders exactly the official text.
SMOLLM2_TEMPLATE_WITH_GENERATION_MARKERS = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def encode_file(path: Path, tokenizer, max_len: int):
    """Our encoder: one official rendering → input_ids and labels (-100 outside answers + terminators)."""
    from llm_dojo.config import DataArguments
    from llm_dojo.data.prepare import prepare_sft_data

    data = DataArguments(train_data_path=str(path), dataset_format="messages", max_len=max_len)
    return prepare_sft_data(data, tokenizer, with_eval=False).train


# ------------------------------------------------------------------------------------------- shared pieces


def lora_config(model, settings: BenchSettings):
    """The same PEFT LoRA for every run: all linear layers but the head."""
    from peft import LoraConfig

    from llm_dojo.models.loading import find_linear_targets

    return LoraConfig(task_type="CAUSAL_LM", r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                      lora_dropout=settings.lora_dropout, target_modules=find_linear_targets(model))


def load_base(settings: BenchSettings):
    import torch

    from llm_dojo.models.loading import load_model

    model = load_model(settings.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def common_training_args(settings: BenchSettings, output_dir: Path) -> dict:
    """TrainingArguments fields shared by all three runs."""
    args = dict(output_dir=str(output_dir), learning_rate=settings.learning_rate, seed=settings.seed,
                gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                logging_steps=1, save_strategy="no", report_to="none", lr_scheduler_type="linear",
                warmup_steps=0, weight_decay=0.0, disable_tqdm=True)
    if settings.steps > 0:
        args["max_steps"] = settings.steps
    else:
        args["num_train_epochs"] = 1
    return args


class TokenCounter:
    """Count the tokens the model is trained on: all fed ones, and the real (attention_mask == 1) ones.

    A forward pre-hook, not a collator wrapper: accelerate's dataloader fetches one batch ahead (to know which
    batch is the last), so a collator is called for a batch that `--steps N` never trains on. Only forward
    passes in training mode count; gradient checkpointing re-runs the layers, never this top-level forward.
    """

    def __init__(self, model):
        self.fed = 0
        self.real = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        if not module.training:
            return
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.fed += input_ids.numel()
        mask = kwargs.get("attention_mask")
        # Padding-free batches carry no attention mask: every token is real.
        self.real += int(mask.sum()) if mask is not None else input_ids.numel()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def heldout_eval(settings: BenchSettings, adapter_dir: Path, heldout_path: Path) -> float:
    """Held-out loss of a saved adapter: base model + adapter, every held-out sample, `outputs.heldout_loss`."""
    from peft import PeftModel

    from llm_dojo.data.batching import PaddedCollator, samples_as_records
    from llm_dojo.models.loading import load_tokenizer
    from llm_dojo.recipes.outputs import ListDataset, heldout_loss

    tokenizer = load_tokenizer(settings.model)
    # Sorted by length so the padded eval batches waste little; the summed loss does not depend on the order.
    samples = sorted(encode_file(heldout_path, tokenizer, settings.max_len), key=lambda s: len(s.input_ids))
    model = PeftModel.from_pretrained(load_base(settings), str(adapter_dir))
    return heldout_loss(model, ListDataset(samples_as_records(samples)), PaddedCollator(tokenizer.pad_token_id))


# ------------------------------------------------------------------------------------------------ the runs


def run_hf_padded(settings: BenchSettings, train_path: Path, out: Path) -> dict:
    """transformers.Trainer + PEFT, batches of 8 padded to their longest; the model computes its own loss."""
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from llm_dojo.data.batching import samples_as_records
    from llm_dojo.models.loading import load_tokenizer
    from llm_dojo.recipes.outputs import ListDataset

    tokenizer = load_tokenizer(settings.model)
    samples = encode_file(train_path, tokenizer, settings.max_len)
    model = load_base(settings)
    model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(model, settings))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    args = TrainingArguments(per_device_train_batch_size=settings.batch_size, remove_unused_columns=False,
                             **common_training_args(settings, out))
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(samples_as_records(samples)),
                      data_collator=collator, processing_class=tokenizer)
    counter = TokenCounter(model)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    model.save_pretrained(out / "adapter")
    return dict(train_seconds=seconds, real_tokens=counter.real, fed_tokens=counter.fed, peak_rss_mb=rss,
                train_loss=result.training_loss, optimizer_steps=result.global_step)


def run_trl(settings: BenchSettings, train_path: Path, out: Path, per_device: Optional[int] = None) -> dict:
    """TRL SFTTrainer: packing (default bfd strategy → padding-free), batch 8, assistant-only loss.

    `per_device=1` is the trl_bs1 run: one packed sequence per forward, accumulated to `batch_size` per update.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from llm_dojo.models.loading import load_tokenizer

    tokenizer = load_tokenizer(settings.model)
    records = [json.loads(line) for line in train_path.read_text(encoding="utf-8").splitlines()]
    _check_same_rendering(tokenizer, records)
    tokenizer.chat_template = SMOLLM2_TEMPLATE_WITH_GENERATION_MARKERS
    model = load_base(settings)
    per_device = per_device or settings.batch_size
    args = SFTConfig(packing=True, max_length=settings.max_len, per_device_train_batch_size=per_device,
                     gradient_accumulation_steps=max(1, settings.batch_size // per_device),
                     assistant_only_loss=True, bf16=False,  # fp32 like the others (TRL defaults to bf16)
                     **common_training_args(settings, out))
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, peft_config=lora_config(model, settings))
    counter = TokenCounter(trainer.model)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    trainer.model.save_pretrained(out / "adapter")
    return dict(train_seconds=seconds, real_tokens=counter.real, fed_tokens=counter.fed, peak_rss_mb=rss,
                train_loss=result.training_loss, optimizer_steps=result.global_step)


def _check_same_rendering(tokenizer, records: list[dict]) -> None:
    """The marked template must render every benchmark conversation exactly like the official one."""
    if "<|im_start|>" not in (tokenizer.chat_template or ""):
        raise ValueError("the trl run's assistant-only loss template is written for SmolLM2's ChatML template")
    for record in records:
        official = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        marked = tokenizer.apply_chat_template(record["messages"], tokenize=False,
                                               chat_template=SMOLLM2_TEMPLATE_WITH_GENERATION_MARKERS)
        if marked != official:
            raise ValueError("the generation-marked template renders differently from the official one")


def run_trl_bs1(settings: BenchSettings, train_path: Path, out: Path) -> dict:
    """TRL with per-device batch 1 (its best setting on this CPU), the same sequences per update."""
    return run_trl(settings, train_path, out, per_device=1)


def run_dojo(settings: BenchSettings, train_path: Path, out: Path) -> dict:
    """Our `train()` as a user runs it: batch 8, everything else dojo's defaults."""
    from llm_dojo.config import load_config
    from llm_dojo.recipes import trainer as dojo_trainer
    from llm_dojo.recipes.sft import train

    common = common_training_args(settings, out)
    overrides = {
        "model_name_or_path": settings.model, "train_data_path": str(train_path), "model_dtype": "fp32",
        "lora_rank": settings.lora_rank, "lora_alpha": settings.lora_alpha, "lora_dropout": settings.lora_dropout,
        "lora_target_modules": "all-linear", "max_len": settings.max_len,
        "per_device_train_batch_size": settings.batch_size, "overwrite_output_dir": True,
        # the user's usual settings: dojo chooses checkpointing, attention and the token budget itself
        **{k: v for k, v in common.items() if not k.startswith("gradient_checkpointing")},
    }
    counters = []
    original_init = dojo_trainer.DojoTrainer.__init__

    def init_with_counter(self, *args, **kwargs):  # the same instrument as the other runs, on dojo's model
        original_init(self, *args, **kwargs)
        counters.append(TokenCounter(self.model))

    dojo_trainer.DojoTrainer.__init__ = init_with_counter  # in this run's own subprocess only
    # Strings are quoted: the override parser reads YAML, where a bare `no` would become False.
    config = load_config(None, [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in overrides.items()])
    summary = train(config)
    rss = peak_rss_mb()
    return dict(train_seconds=summary["train_seconds"], real_tokens=counters[0].real, fed_tokens=counters[0].fed,
                peak_rss_mb=rss, train_loss=summary["train_loss"], optimizer_steps=summary["steps"],
                adapter=str(out))


RUNNERS = {"hf_padded": run_hf_padded, "trl": run_trl, "trl_bs1": run_trl_bs1, "dojo": run_dojo}
