"""Two processes on a CPU (gloo), through torchrun and accelerate launch, train what one process trains.

The global batch is the whole data set (8 rows, one optimizer step per epoch, two epochs), so the order each
process sees its rows in cannot matter: the adapter and every logged loss must equal the single-process run.
Before the loss-scale fix in DojoTrainer.compute_loss the two-process gradients (and losses) were half as big.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Eight records of similar length: with max_len 96 no two fit in one packed row, so there are exactly 8 rows and
# each process gets 4 (a row count that does not divide would make the distributed sampler repeat one).
RECORDS = [{"instruction": f"Question number {i}: what is {i} plus {i}? Answer in a full sentence please.",
            "output": f"The answer to question {i} is {2 * i}, because {i} plus {i} makes {2 * i}."} for i in range(8)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings(model: str, data: str, output: Path, per_device: int) -> list[str]:
    return [f"model_name_or_path={model}", f"train_data_path={data}", f"output_dir={output}", "model_dtype=fp32",
            "max_len=96", "lora_dropout=0", "learning_rate=1e-2", "lr_scheduler_type=constant", "warmup_steps=0",
            "num_train_epochs=2", "logging_steps=1",
            f"per_device_train_batch_size={per_device}", "disable_tqdm=true", "seed=3"]


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def trained(output: Path) -> tuple[dict, list[float], dict]:
    adapter = load_file(output / "adapter_model.safetensors")
    summary = json.loads((output / "training_summary.json").read_text())
    losses = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    return adapter, losses, summary


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_the_adapter_one_process_trains(launcher, tiny_model_dir, tmp_path, write_jsonl):
    model, data = tiny_model_dir("llama"), write_jsonl(RECORDS)
    # `dojo train` as a module everywhere (main_train.py without a config file trains on top of the demo's config).
    run([sys.executable, "-m", "llm_dojo.cli", "train", *settings(model, data, tmp_path / "one", per_device=8)])
    if launcher == "torchrun":
        command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                   "-m", "llm_dojo.cli", "train"]
    else:
        # accelerate's `--cpu` starts ONE process (several need mpirun); `--multi_gpu` selects its torchrun-style
        # launcher, and on a machine without a GPU dojo then asks transformers for CPU processes (gloo).
        command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                   "-m", "llm_dojo.cli", "train"]
    two = run(command + settings(model, data, tmp_path / "two", per_device=4))

    one_adapter, one_losses, one_summary = trained(tmp_path / "one")
    two_adapter, two_losses, two_summary = trained(tmp_path / "two")
    assert two_summary["processes"] == 2 and one_summary["processes"] == 1
    assert two_summary["steps"] == one_summary["steps"] == 2  # the data was shared, not trained twice
    assert two_summary["samples_trained"] == one_summary["samples_trained"] == 16
    assert two_summary["real_tokens_trained"] == one_summary["real_tokens_trained"]
    assert len(two_losses) == len(one_losses) == 2 and one_losses[1] < one_losses[0] - 0.1  # both steps learned
    history = [{k: e.get(k) for k in ("loss", "grad_norm", "learning_rate")} for e in two_summary["log_history"]
               + one_summary["log_history"] if "loss" in e]
    assert two_losses == pytest.approx(one_losses, rel=1e-4), history
    assert one_adapter.keys() == two_adapter.keys()
    for name, weight in one_adapter.items():
        # Two processes sum a gradient in two halves and all-reduce them: it differs from one process's sum in the
        # last float bits. AdamW's first steps divide each gradient by its own size, which magnifies those bits for
        # the few elements whose gradient is near zero (measured: 1 element of 1,024 off by 1.4e-4 relative, 6e-6
        # absolute; every other within 1e-6).
        torch.testing.assert_close(two_adapter[name], weight, rtol=1e-3, atol=1e-5, msg=name)
    # Only the first process reports: one summary line, and the other process's INFO logs are silent.
    assert two.stderr.count("dojo train: done") == 1
