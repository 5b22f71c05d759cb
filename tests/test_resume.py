"""Resume after a crash: a run killed with SIGKILL at a random step and resumed with `auto` ends with the adapter of a
run that was never stopped, and a damaged checkpoint is skipped, never loaded (llm_dojo/recipes/checkpoints.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_dojo.config_io import ConfigError
from llm_dojo.recipes.checkpoints import SEAL, checkpoint_problem, checkpoint_to_resume, seal_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [{"instruction": f"Question {i}: what is {i} times three?", "output": f"{i} times three is {3 * i}."}
           for i in range(24)]
STEPS = 10


def settings(model: str, data: str, output: Path) -> list[str]:
    # Dropout on and a warm-up schedule: the resumed run must restore the RNG and the scheduler, not only weights.
    return [f"model_name_or_path={model}", f"train_data_path={data}", f"output_dir={output}", "model_dtype=fp32",
            "max_len=64", "lora_dropout=0.1", "learning_rate=1e-2", "warmup_steps=3", f"max_steps={STEPS}",
            "per_device_train_batch_size=2", "logging_steps=1", "save_strategy=steps", "save_steps=1",
            "save_total_limit=3", "disable_tqdm=true", "seed=7"]


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "llm_dojo.cli", "train", *arguments]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def sealed_steps(output: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if (p / SEAL).is_file())


@pytest.mark.slow
def test_a_run_killed_at_a_random_step_resumes_to_the_uninterrupted_adapter(tiny_model_dir, write_jsonl, tmp_path):
    model, data = tiny_model_dir("llama"), write_jsonl(RECORDS)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(command(*settings(model, data, straight)), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    kill_after = random.Random().randint(3, STEPS - 3)  # a random step, printed on failure
    process = subprocess.Popen(command(*settings(model, data, killed)), cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not sealed_steps(killed) or sealed_steps(killed)[-1] < kill_after:
        assert process.poll() is None and time.time() < deadline, f"run ended before step {kill_after}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter_model.safetensors").exists()

    # The newest sealed checkpoint is then damaged (a disk error cut its weights short): it must be skipped.
    newest = killed / f"checkpoint-{sealed_steps(killed)[-1]}"
    weights = newest / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    resumed = subprocess.run(command(*settings(model, data, killed), "resume_from_checkpoint=auto"), cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping {newest}" in resumed.stderr, resumed.stderr[-3000:]
    summary = json.loads((killed / "training_summary.json").read_text())
    resumed_step = int(Path(summary["resumed_from"]).name.split("-")[1])
    assert resumed_step < int(newest.name.split("-")[1]), (kill_after, summary["resumed_from"])

    expected, got = load_file(straight / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:  # same seed, same batches, same dropout masks: equal up to float summation order
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=f"{name} (killed after "
                                   f"step {kill_after}, resumed from step {resumed_step})")
    straight_summary = json.loads((straight / "training_summary.json").read_text())
    assert summary["steps"] == straight_summary["steps"] == STEPS
    assert len(list(killed.glob("checkpoint-*"))) <= 3 and len(list(straight.glob("checkpoint-*"))) <= 3


def fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4, 4)}, folder / "adapter_model.safetensors")
    torch.save({"state": torch.arange(1000.0)}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text("{}")
    seal_checkpoint(folder)
    return folder


def test_a_checkpoint_counts_only_when_sealed_and_whole(tmp_path):
    whole = fake_checkpoint(tmp_path / "out" / "checkpoint-2")
    assert checkpoint_problem(whole) is None

    unsealed = fake_checkpoint(tmp_path / "out" / "checkpoint-4")
    (unsealed / SEAL).unlink()  # killed before the seal: the save had not finished
    assert "no dojo_checkpoint.json" in checkpoint_problem(unsealed)

    corrupt = fake_checkpoint(tmp_path / "out" / "checkpoint-6")
    raw = bytearray((corrupt / "optimizer.pt").read_bytes())
    with zipfile.ZipFile(corrupt / "optimizer.pt") as archive:
        info = next(i for i in archive.infolist() if i.file_size > 1000)
    raw[info.header_offset + 200] ^= 0xFF  # one flipped byte inside the tensor data, same size
    (corrupt / "optimizer.pt").write_bytes(bytes(raw))
    assert "CRC" in checkpoint_problem(corrupt)

    assert checkpoint_to_resume("auto", str(tmp_path / "out")) == str(whole)  # the two newer ones are skipped
    assert checkpoint_to_resume(None, str(tmp_path / "out")) is None
    assert checkpoint_to_resume("auto", str(tmp_path / "empty")) is None
    with pytest.raises(ConfigError, match="checkpoint-6.*CRC"):
        checkpoint_to_resume(str(corrupt), str(tmp_path / "out"))


def test_empty_weights_are_refused_when_sealing(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    save_file({"w": torch.ones(0, 4)}, folder / "adapter_model.safetensors")  # what ZeRO-3 writes ungathered
    with pytest.raises(RuntimeError, match="stage3_gather_16bit_weights_on_model_save"):
        seal_checkpoint(folder)
    assert not (folder / SEAL).exists()
