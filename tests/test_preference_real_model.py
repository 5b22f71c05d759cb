"""The preference stage on the embedded SmolLM2-135M-Instruct: step 0 is log 2 with each reference, and DPO moves
the rewards the right way within a few steps."""

from __future__ import annotations

import json
import math

import pytest

from llm_dojo.config import load_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "demo_preference.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()[:8]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("reference", ["disabled_adapter", "precomputed", "full_frozen_copy"])
def test_embedded_model_dpo_starts_at_log_2_and_learns(tmp_path, demo_pairs, reference):
    from llm_dojo.recipes.sft import train

    overrides = {"disabled_adapter": [], "precomputed": ["precompute_ref_log_probs=true"],
                 "full_frozen_copy": ["train_mode=full", "learning_rate=1e-5"]}[reference]
    config = load_config(None, [f"train_data_path={demo_pairs}", f"output_dir={tmp_path / 'out'}", "stage=dpo",
                                "max_steps=4", "per_device_train_batch_size=4", "logging_steps=1",
                                "learning_rate=5e-4", "lora_dropout=0", "max_len=256", "disable_tqdm=true",
                                "save_strategy=no", *overrides])
    summary = train(config)
    logged = [entry for entry in summary["log_history"] if "loss" in entry]
    assert abs(logged[0]["loss"] - math.log(2)) < 1e-5, logged[0]
    assert logged[0]["rewards/margins"] == 0
    # Four steps on the same 8 pairs: the margin grows and the loss falls below log 2.
    assert logged[-1]["rewards/margins"] > 0.05 and logged[-1]["loss"] < math.log(2) - 0.02, logged[-1]
    saved = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert saved["stage"] == "dpo" and saved["last_logged_rewards"]["rewards/accuracies"] > 0.5
