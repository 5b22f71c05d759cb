"""The bundled lm-evaluation-harness task runs offline end to end, in-process and through `dojo serve`, with equal
multiple-choice accuracy and equal per-choice log-likelihoods both ways."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("lm_eval")

from llm_dojo import cli  # noqa: E402
from llm_dojo.eval.lm_eval_bridge import BUNDLED_TASKS, run_against_server, run_in_process  # noqa: E402
from llm_dojo.models.loading import load_for_inference  # noqa: E402
from llm_dojo.serve.app import create_app, serve_in_background  # noqa: E402
from llm_dojo.serve.engines import HFEngine  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = "dojo_mini_mc"
# Log-likelihoods of the same tokens by two code paths: HFLM's batched, padded forward vs the server's one-prompt
# forward, in fp32.
LOGLIK_ATOL = 1e-4


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub: the bundled task must not need one."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def both_ways(model, tokenizer, tokenizer_path: str, model_id: str, limit=None):
    local = run_in_process(model, tokenizer, [TASK], batch_size=8, limit=limit)
    engine = HFEngine(model, tokenizer, model_id, stop_ids=[tokenizer.eos_token_id], max_batch_size=4)
    try:
        with serve_in_background(create_app(engine)) as url:
            served = run_against_server(url, tokenizer_path, [TASK], limit=limit)
    finally:
        engine.close()
    return local, served


def assert_same(local, served):
    assert local["metrics"][f"lm_eval/{TASK}/acc"] == served["metrics"][f"lm_eval/{TASK}/acc"]
    assert local["metrics"][f"lm_eval/{TASK}/acc_norm"] == served["metrics"][f"lm_eval/{TASK}/acc_norm"]
    ours, theirs = local["loglikelihoods"][TASK], served["loglikelihoods"][TASK]
    assert len(ours) == len(theirs) > 0
    for doc_local, doc_served in zip(ours, theirs):
        assert doc_local == pytest.approx(doc_served, abs=LOGLIK_ATOL)


def test_bundled_task_equal_in_process_and_served_on_a_tiny_model(tiny_model_dir):
    folder = tiny_model_dir("llama")
    model, tokenizer = load_for_inference(folder, dtype=torch.float32)
    local, served = both_ways(model, tokenizer, folder, "tiny", limit=6)
    assert_same(local, served)
    assert len(local["loglikelihoods"][TASK]) == 6 and all(len(doc) == 4 for doc in local["loglikelihoods"][TASK])


@pytest.mark.slow
def test_bundled_task_on_the_embedded_model_equal_both_ways():
    from llm_dojo.models.embedded import embedded_model_path

    folder = embedded_model_path()
    model, tokenizer = load_for_inference(folder, dtype=torch.float32)
    local, served = both_ways(model, tokenizer, folder, "smollm2")
    assert_same(local, served)
    assert len(local["loglikelihoods"][TASK]) == 20
    # SmolLM2-135M-Instruct knows most of these: 13 of 20 (measured), both ways.
    assert local["metrics"][f"lm_eval/{TASK}/acc"] == pytest.approx(0.65)


def test_dojo_eval_tasks_by_name_and_by_yaml_path_and_against_a_server(tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir("llama")
    assert cli.main(["eval", "--model", folder, "--tasks", TASK, "--limit", "4", "--output", str(tmp_path / "a")]) == 0
    by_name = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(by_name) >= {f"lm_eval/{TASK}/acc", f"lm_eval/{TASK}/acc_norm"}

    copy = tmp_path / "my_tasks"  # a task YAML anywhere: its folder goes on the include path
    shutil.copytree(BUNDLED_TASKS / TASK, copy)
    os.rename(copy / f"{TASK}.yaml", copy / "my_task.yaml")
    (copy / "my_task.yaml").write_text((copy / "my_task.yaml").read_text().replace(f"task: {TASK}", "task: my_mc"))
    assert cli.main(["eval", "--model", folder, "--tasks", str(copy / "my_task.yaml"), "--limit", "4"]) == 0
    by_path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_path["lm_eval/my_mc/acc"] == by_name[f"lm_eval/{TASK}/acc"]

    model, tokenizer = load_for_inference(folder, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, "tiny-served", stop_ids=[tokenizer.eos_token_id], max_batch_size=4)
    try:
        with serve_in_background(create_app(engine)) as url:
            assert cli.main(["eval", "--model", folder, "--tasks", TASK, "--limit", "4", "--server", url]) == 0
    finally:
        engine.close()
    served = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert served[f"lm_eval/{TASK}/acc"] == by_name[f"lm_eval/{TASK}/acc"]


@pytest.mark.slow  # looking a name up among the harness's own tasks indexes all of them (~20-50 s here)
def test_unknown_task_is_refused_by_name_before_the_model_loads(tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr("llm_dojo.infer.common.load_from_args", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["eval", "--model", tiny_model_dir("llama"), "--tasks", "no_such_task_xyz"]) == 2
    assert "unknown lm-evaluation-harness task 'no_such_task_xyz'" in capsys.readouterr().err
