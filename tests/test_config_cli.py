"""Configuration parsing and the `dojo train` command's errors: named keys, accepted values, no training started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_dojo.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_then_overrides_and_every_training_argument(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train_data_path: data.jsonl\nlora_rank: 8\nlearning_rate: 1.0e-4\nuse_dora: true\n")
    config = load_config(str(config_file), ["lora_rank=4", "num_train_epochs=2", "train_mode=qlora"])
    assert config.adapter.lora_rank == 4 and config.adapter.use_dora is True
    assert config.training.learning_rate == 1e-4 and config.training.num_train_epochs == 2
    assert config.model.train_mode == "qlora"
    assert config.data.train_data_path == "data.jsonl"


def test_no_and_yes_are_words_not_booleans_but_boolean_settings_still_accept_them(tmp_path):
    """YAML 1.1 reads `no` as False; `save_strategy: no` must stay the strategy "no" (file and command line)."""
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train_data_path: data.jsonl\nsave_strategy: no\npacking: no\nuse_dora: yes\n")
    config = load_config(str(config_file))
    assert config.training.save_strategy == "no"
    assert config.data.packing is False and config.adapter.use_dora is True
    config = load_config(None, ["train_data_path=x.jsonl", "save_strategy=no", "eval_strategy=no", "packing=false"])
    assert config.training.save_strategy == "no" and config.training.eval_strategy == "no"
    assert config.data.packing is False


@pytest.mark.parametrize("overrides,expected", [
    (["train_mod=lora"], "unknown key 'train_mod' (did you mean 'train_mode'?)"),
    (["train_mode=lorra"], "invalid choice: 'lorra' (choose from 'lora', 'qlora', 'full')"),
    (["lora_rank=big"], "lora_rank"),
    (["lora_rank=0"], "'lora_rank' must be a positive integer"),
    (["lora_dropout=1.5"], "'lora_dropout' must be in [0, 1)"),
    (["max_len=4"], "'max_len' must be at least 16"),
    (["learning_rate"], "expected key=value"),
    (["trick_impl=dojo", "train_mode=qlora"], "'trick_impl: dojo' supports train_mode 'lora' only"),
])
def test_bad_keys_and_values_name_the_key_and_accepted_values(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train_data_path=x.jsonl"] + overrides)
    assert expected in str(info.value)


def test_missing_train_data_path_and_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="'train_data_path' is required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_every_bundled_train_args_file_parses():
    files = sorted((ROOT / "train_args").glob("*.yaml"))
    assert len(files) >= 8
    import torch

    # The family presets ask for bf16, which needs a GPU; on this CPU-only machine only that one key is switched.
    on_cpu = [] if torch.cuda.is_available() else ["bf16=false"]
    for path in files:
        config = load_config(str(path), on_cpu)
        assert config.data.train_data_path and config.model.model_name_or_path


def test_dojo_train_bad_data_exits_2_naming_file_line_and_field_before_loading_a_model(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "Hi", "output": "Yo"}\n{"instruction": "Hi", "output": ""}\n')
    code = (
        "import sys, llm_dojo.recipes.sft as sft\n"
        "sft.load_model = lambda *a, **k: sys.exit('model loaded before data was checked')\n"
        "from llm_dojo.cli import main\n"
        f"sys.exit(main(['train', 'train_data_path={data}', 'output_dir={tmp_path / 'out'}']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"{data}:2: field 'output' is empty" in result.stderr
    assert not (tmp_path / "out").exists()


def test_dojo_without_arguments_lists_commands():
    result = subprocess.run([sys.executable, "-m", "llm_dojo.cli"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "train" in result.stdout and "inspect" in result.stdout


def test_liger_kernel_keeps_our_trained_positions_loss_or_fails_early(monkeypatch):
    import importlib.util

    from llm_dojo.recipes.sft import prepare_liger_kernel

    config = load_config(None, ["train_data_path=x.jsonl", "use_liger_kernel=true"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else True)
    with pytest.raises(ConfigError, match="liger-kernel"):
        prepare_liger_kernel(config.training)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: True)
    prepare_liger_kernel(config.training)
    assert config.training.liger_kernel_config == {"fused_linear_cross_entropy": False}

    own = load_config(None, ["train_data_path=x.jsonl", "use_liger_kernel=true"])
    own.training.liger_kernel_config = {"rms_norm": False}
    prepare_liger_kernel(own.training)
    assert own.training.liger_kernel_config == {"rms_norm": False}  # the user's choice is kept
