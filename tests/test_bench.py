"""`dojo bench`: the generated data is deterministic and skewed as documented; a tiny bench prints its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_dojo.bench import RESULT_KEYS, RUNS, SHORT_MODE, BenchSettings, parse_args
from llm_dojo.bench_runs import RUNNERS, SMOLLM2_TEMPLATE_WITH_GENERATION_MARKERS, TokenCounter
from llm_dojo.bench_data import make_records

ROOT = Path(__file__).resolve().parents[1]


def test_every_run_the_cli_offers_has_a_runner():
    assert tuple(RUNNERS) == RUNS


def token_lengths(records, tokenizer) -> list[int]:
    return sorted(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                add_special_tokens=False)["input_ids"]) for r in records)


def test_generator_is_deterministic_and_seed_dependent():
    assert make_records(50, seed=0) == make_records(50, seed=0)
    assert make_records(50, seed=0) != make_records(50, seed=1)


def test_generator_mixes_single_and_multi_turn_english_chats():
    records = make_records(360, seed=0)
    turns = [sum(m["role"] == "assistant" for m in r["messages"]) for r in records]
    assert 0.1 < sum(t > 1 for t in turns) / len(turns) < 0.5
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)
    assert any(r["messages"][0]["role"] == "system" for r in records)


@pytest.mark.slow
def test_generated_lengths_have_the_documented_spread(smol_tokenizer):
    lengths = token_lengths(make_records(360, seed=0), smol_tokenizer)

    def percentile(q: int) -> int:
        return lengths[round(q / 100 * (len(lengths) - 1))]

    assert 57 <= percentile(10) <= 77  # documented ≈ 67
    assert 100 <= percentile(50) <= 125  # ≈ 111
    assert 440 <= percentile(90) <= 540  # ≈ 492
    assert 960 <= lengths[-1] <= 1024  # ≈ 1014, and no sample is truncated at max_len 1024


@pytest.mark.slow
def test_trl_marked_template_renders_exactly_the_official_text(smol_tokenizer):
    for record in make_records(40, seed=3):
        official = smol_tokenizer.apply_chat_template(record["messages"], tokenize=False)
        marked = smol_tokenizer.apply_chat_template(record["messages"], tokenize=False,
                                                    chat_template=SMOLLM2_TEMPLATE_WITH_GENERATION_MARKERS)
        assert marked == official


def test_short_mode_fills_only_the_options_not_given():
    full = BenchSettings()
    args = parse_args([])
    assert (args.steps, args.samples, args.eval_samples, args.batch_size) == (
        full.steps, full.samples, full.eval_samples, full.batch_size)
    short = parse_args(["--short"])
    assert {k: getattr(short, k) for k in SHORT_MODE} == SHORT_MODE
    assert parse_args(["--short", "--steps", "5"]).steps == 5
    assert parse_args(["--short", "--steps", "5"]).batch_size == SHORT_MODE["batch_size"]


def test_token_counter_counts_only_the_batches_trained_on(tiny_model_dir, tmp_path):
    """accelerate's dataloader fetches one batch ahead; with max_steps=1 only the first batch is trained on."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from llm_dojo.models.loading import load_model, load_tokenizer
    from llm_dojo.recipes.outputs import ListDataset

    folder = tiny_model_dir("llama")
    tokenizer = load_tokenizer(folder)
    model = load_model(folder)
    lengths = [5, 9, 7, 3, 12, 4, 6, 8]  # two batches of 4
    records = [{"input_ids": list(range(10, 10 + n)), "labels": list(range(10, 10 + n))} for n in lengths]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(records), data_collator=collator)
    trainer._get_train_sampler = lambda *a, **k: None  # keep the order: the first batch is lengths[:4]
    counter = TokenCounter(model)
    trainer.train()
    assert counter.real == sum(lengths[:4])
    assert counter.fed == 4 * max(lengths[:4])

    model.eval()
    model(input_ids=torch.tensor([[10, 11, 12]]))  # evaluation forwards are not training tokens
    assert counter.real == sum(lengths[:4])


@pytest.mark.slow
def test_tiny_bench_prints_one_json_line_with_every_key_for_every_run(tiny_model_dir, tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "llm_dojo.bench", "--model", tiny_model_dir("llama"), "--steps", "1",
               "--samples", "8", "--eval-samples", "4", "--max-len", "128", "--output", str(output)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert list(results) == list(RUNS)
    for run in RUNS:
        for key in RESULT_KEYS:
            assert isinstance(results[run][key], (int, float)), (run, key)
        assert results[run]["optimizer_steps"] == 1
    assert results["dojo"]["pad_fraction"] == 0
    assert results["hf_padded"]["pad_fraction"] > 0
    # The same 8 samples, whole: the padded and the packed runs feed the same real tokens.
    assert results["hf_padded"]["real_tokens"] == results["trl"]["real_tokens"]
    assert json.loads(output.read_text())["results"] == results


def test_dpo_bench_defaults_and_pairs():
    from llm_dojo.bench_dpo import make_pairs

    args = parse_args(["--stage", "dpo"])
    assert (args.runs, args.samples, args.batch_size, args.learning_rate) == ("trl_dpo,dojo_dpo", 48, 4, 5e-5)
    pairs = make_pairs(200, seed=0)
    assert pairs == make_pairs(200, seed=0)  # deterministic
    words = sorted(len(p[side][0]["content"].split()) for p in pairs for side in ("chosen", "rejected"))
    # Length-skewed: most answers short, a long tail (10 to 300 words drawn log-uniformly).
    assert words[0] >= 3 and words[-1] <= 330 and words[len(words) // 2] < 100 < words[-1]



def test_grpo_bench_defaults_and_trl_reward_matches_dojos_format_reward():
    from llm_dojo.bench_grpo import FORMAT_PATTERN, trl_format_reward
    from llm_dojo.rewards.builtin import FormatReward

    args = parse_args(["--stage", "grpo"])
    assert (args.runs, args.steps, args.batch_size, args.learning_rate) == ("trl_grpo,dojo_grpo", 8, 1, 2e-4)
    assert parse_args(["--stage", "grpo", "--steps", "2", "--runs", "dojo_grpo"]).steps == 2
    # The TRL run's reward function must score exactly like dojo's built-in `format` with the demo's pattern.
    texts = ["<answer>Tokyo</answer>", "  <answer>Tokyo</answer>\n", "The answer: <answer>Tokyo</answer>",
             "<answer></answer>", "<answer>a<b</answer>", "<answer>" + "x" * 81 + "</answer>",
             "<answer>two\nlines</answer>"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert trl_format_reward(completions) == FormatReward(FORMAT_PATTERN)(completions) == expected
