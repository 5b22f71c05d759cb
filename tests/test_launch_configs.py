"""The multi-GPU launch configs in train_args/launch/ go through the same code a real launch runs, without a GPU.

`accelerate launch --config_file X.yaml` reads the YAML, turns it into environment variables and starts the
processes; in each one the Trainer builds a DeepSpeed or FSDP plugin from those variables and fills the DeepSpeed
JSON's "auto" values from TrainingArguments. Here the launcher stops just before starting processes (its
`*_launcher` functions are replaced by a recorder), and the plugins and the "auto" filling run for real.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import types
from pathlib import Path

import pytest
from accelerate.commands import launch as accelerate_launch
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from conftest import TINY_ARCHS, tiny_config
from llm_dojo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "train_args" / "launch"
DS_STAGES = {"ds_zero2.json": 2, "ds_zero3.json": 3}
# accelerate config -> (engine, the DeepSpeed JSON it points at)
ACCELERATE_CONFIGS = {
    "ddp.yaml": (DistributedType.MULTI_GPU, None),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, "train_args/launch/ds_zero2.json"),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, "train_args/launch/ds_zero3.json"),
    "fsdp2.yaml": (DistributedType.FSDP, None),
}
# Qwen2.5-7B's width: the training YAML the DeepSpeed values are filled from is the Qwen2.5-7B one.
HIDDEN_SIZE = 3584


def test_every_shipped_launch_file_is_checked_here():
    shipped = {path.name for path in LAUNCH.iterdir() if path.suffix in (".yaml", ".json")}
    assert shipped == set(ACCELERATE_CONFIGS) | set(DS_STAGES)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_loads_with_accelerates_own_reader(name):
    engine, ds_file = ACCELERATE_CONFIGS[name]
    config = ClusterConfig.from_yaml_file(LAUNCH / name)
    assert config.distributed_type == engine
    assert config.num_processes == 2 and config.num_machines == 1
    # No mixed_precision: the training YAML's bf16/fp16 is the only source (and DeepSpeed refuses it, see below).
    assert config.mixed_precision is None
    assert config.deepspeed_config.get("deepspeed_config_file") == ds_file
    if ds_file:
        assert (ROOT / ds_file).is_file()  # a path from the repository root, where accelerate is launched
    if engine == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2


def launched(name: str, *extra: str) -> tuple[argparse.Namespace, dict]:
    """What `accelerate launch --config_file NAME [extra] main_train.py` would start: its arguments and the
    environment variables it adds for the training processes."""
    recorded = {}
    argv = ["--config_file", str(LAUNCH / name), *extra, "main_train.py", "train_args/demo_identity.yaml"]
    args = accelerate_launch.launch_command_parser().parse_args(argv)
    with pytest.MonkeyPatch.context() as patch:
        for launcher in ("deepspeed_launcher", "multi_gpu_launcher", "simple_launcher"):
            patch.setattr(accelerate_launch, launcher, lambda launch_args: recorded.setdefault("args", launch_args))
        accelerate_launch.launch_command(args)
    args = recorded["args"]
    env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    added = {key: value for key, value in env.items() if key.startswith(("ACCELERATE_", "FSDP_"))}
    return args, added


@pytest.mark.parametrize("name, launcher", [("ddp.yaml", "multi_gpu"), ("deepspeed_zero2.yaml", "use_deepspeed"),
                                            ("deepspeed_zero3.yaml", "use_deepspeed"), ("fsdp2.yaml", "use_fsdp")])
def test_launcher_starts_the_right_engine_and_num_processes_overrides(name, launcher):
    args, env = launched(name)
    assert getattr(args, launcher) and args.num_processes == 2
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # TrainingArguments' bf16/fp16 then decide
    args, _ = launched(name, "--num_processes", "8")
    assert args.num_processes == 8


def plugin_from(env: dict, monkeypatch, plugin_class):
    """The plugin a training process builds from the launcher's environment variables."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return plugin_class()


@pytest.fixture(scope="module")
def training_args():
    """TrainingArguments of a shipped training YAML (bf16, batch 2 × accumulation 8; use_cpu: no GPU here)."""
    return load_config(str(ROOT / "train_args" / "qwen2.5-7b-instruct-qlora.yaml"), ["use_cpu=true"]).training


class TrainerFilledConfig(HfDeepSpeedConfig):
    """transformers' own "auto" filling (the methods of HfTrainerDeepSpeedConfig) on accelerate's config reader.

    HfTrainerDeepSpeedConfig inherits from that reader only when the deepspeed package is installed, which `make
    test` does not do; the filling methods themselves use nothing from deepspeed, so they are borrowed unchanged.
    """

    is_auto = vars(HfTrainerDeepSpeedConfig)["is_auto"]
    fill_match = vars(HfTrainerDeepSpeedConfig)["fill_match"]
    fill_only = vars(HfTrainerDeepSpeedConfig)["fill_only"]
    trainer_config_process = vars(HfTrainerDeepSpeedConfig)["trainer_config_process"]
    trainer_config_finalize = vars(HfTrainerDeepSpeedConfig)["trainer_config_finalize"]

    def __init__(self, config: dict):
        super().__init__(config)
        self._dtype, self.mismatches = None, []


def autos(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still "auto"."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in autos(value, f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


@pytest.mark.parametrize("name", sorted(DS_STAGES))
def test_deepspeed_json_leaves_optimizer_and_scheduler_to_our_config(name):
    config = json.loads((LAUNCH / name).read_text())
    # With either section DeepSpeed would build its own optimizer/scheduler and silently replace ours
    # (transformers' deepspeed_optim_sched); without them the Trainer's optimizer and lr_scheduler_type are used.
    assert "optimizer" not in config and "scheduler" not in config
    assert config["zero_optimization"]["stage"] == DS_STAGES[name]
    if DS_STAGES[name] == 3:  # else a save gets the empty local shards of each weight
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_every_deepspeed_auto_is_filled_from_the_training_yaml(name, training_args, monkeypatch):
    _, env = launched(name)
    # The plugin refuses accelerate keys (zero_stage, mixed_precision, ...) that would conflict with the JSON.
    plugin = plugin_from(env, monkeypatch, DeepSpeedPlugin)
    stage = DS_STAGES[Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).name]
    assert plugin.zero_stage == stage and plugin.zero3_init_flag == (stage == 3)

    filled = TrainerFilledConfig(plugin.deepspeed_config)
    filled.trainer_config_process(training_args)  # when the Trainer is built
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=HIDDEN_SIZE))
    filled.trainer_config_finalize(training_args, model, num_training_steps=100)  # raises on a mismatch
    config = filled.config
    assert autos(config) == [] and filled.mismatches == []
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 8
    assert config["train_batch_size"] == 16  # 1 process × 2 × 8
    assert config["gradient_clipping"] == training_args.max_grad_norm == 1.0
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == HIDDEN_SIZE**2
    if stage == 3:
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * HIDDEN_SIZE**2)
        assert zero["stage3_param_persistence_threshold"] == 10 * HIDDEN_SIZE
        assert plugin.zero3_save_16bit_model is True


@pytest.fixture
def fsdp2_env():
    return launched("fsdp2.yaml")[1]


def test_fsdp2_plugin_builds_from_the_launch_environment(fsdp2_env, monkeypatch):
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = plugin_from(fsdp2_env, monkeypatch, FullyShardedDataParallelPlugin)
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # taken from each model's _no_split_modules
    assert plugin.cpu_ram_efficient_loading is True and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # else Trainer.save_model writes no weights
    assert plugin.activation_checkpointing is False  # the Trainer refuses it next to gradient_checkpointing
    assert plugin.use_orig_params is None and plugin.sync_module_states is None  # FSDP1-only settings


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_fsdp2_shards_each_decoder_layer_of_a_lora_model(arch, fsdp2_env, monkeypatch):
    """The auto-detected wrap class reaches through PEFT's wrapper to the base model's decoder layers."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import AutoModelForCausalLM

    from llm_dojo.models.adapters import make_trainable

    model_config = tiny_config(arch, vocab_size=32064)  # above Phi-3's default pad id 32000
    base = AutoModelForCausalLM.from_config(model_config)
    config = load_config(None, ["train_data_path=unused.jsonl", "train_mode=lora", "lora_rank=4"])
    model = make_trainable(base, config)
    plugin = plugin_from(fsdp2_env, monkeypatch, FullyShardedDataParallelPlugin)
    plugin.set_auto_wrap_policy(model)  # the two calls accelerate's fsdp2_prepare_model makes
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [module for module in model.modules() if policy(module)]
    assert len(wrapped) == model_config.num_hidden_layers
    assert {type(module).__name__ for module in wrapped} == set(plugin.transformer_cls_names_to_wrap)
    assert all(type(module).__name__.endswith("DecoderLayer") for module in wrapped)


def test_gpu_multi_check_script_is_valid_bash():
    script = ROOT / "scripts" / "gpu_multi_check.sh"
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    text = script.read_text()
    for config in ("train_args/launch/deepspeed_zero2.yaml", "train_args/launch/fsdp2.yaml"):
        assert config in text and (ROOT / config).is_file()
