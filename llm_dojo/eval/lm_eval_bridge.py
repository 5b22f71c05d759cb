"""lm-evaluation-harness tasks on our model: in-process on the loaded model (adapter unmerged), or through `dojo serve`.

- In-process: `lm_eval.simple_evaluate` on an `HFLM` wrapped around the model and tokenizer already loaded for
  `dojo eval` (a PEFT model keeps its adapter separate, exactly as trained; nothing is merged or loaded twice).
- Served: the harness's `local-completions` model against `/v1/completions` of a running `dojo serve` (or any
  OpenAI-compatible server). Multiple-choice tasks score each choice with `echo` + `logprobs`; requests carry token
  ids (`tokenized_requests`), tokenized by the served model's own tokenizer, so both ways score the same tokens.

Tasks are named as the harness names them (`hellaswag`, or our bundled `dojo_mini_mc`) or given as a path to a
task YAML (its folder is added to the harness's include path). Bundled tasks live in llm_dojo/eval/tasks/.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import urllib.request
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

BUNDLED_TASKS = Path(__file__).parent / "tasks"
TASK_NAME = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def resolve_tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """Task names plus the folders to include: a `.yaml` path becomes its `task:` name and its folder."""
    names, folders = [], [str(BUNDLED_TASKS)]
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            path = Path(task).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--tasks: task file {task} not found")
            match = TASK_NAME.search(path.read_text(encoding="utf-8"))
            if match is None:
                raise ValueError(f"{task}: no 'task:' line naming the task")
            names.append(match.group(1))
            if str(path.resolve().parent) not in folders:
                folders.append(str(path.resolve().parent))
        else:
            names.append(task)
    return names, folders


def task_manager(names: list[str], folders: list[str]):
    """The harness's TaskManager: our folders only when they hold every task (indexing all built-ins takes seconds)."""
    return _task_manager(tuple(names), tuple(folders))


@functools.lru_cache(maxsize=4)  # checked before the model loads, used again after: index the tasks once
def _task_manager(names: tuple[str, ...], folders: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=folders, include_defaults=False, verbosity="ERROR")
    missing = [name for name in names if name not in manager.all_tasks]
    if missing:
        manager = TaskManager(include_path=folders, include_defaults=True, verbosity="ERROR")
        unknown = [name for name in missing if name not in manager.all_tasks]
        if unknown:
            raise ValueError(f"--tasks: unknown lm-evaluation-harness task {unknown[0]!r} (a harness task name, "
                             f"'dojo_mini_mc', or a path to a task .yaml)")
    return manager


def run_in_process(model, tokenizer, tasks: list[str], *, batch_size: int = 8, limit: Optional[int] = None) -> dict:
    """Run `tasks` on the loaded model; returns {"metrics": flat metrics, "loglikelihoods": per task, per doc}."""
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=_context_window(model))
    try:
        return _evaluate(lm, tasks, limit)
    finally:
        model.train(was_training)


def run_against_server(base_url: str, tokenizer_path: str, tasks: list[str], *, limit: Optional[int] = None,
                       model_id: Optional[str] = None) -> dict:
    """Run `tasks` against an OpenAI-compatible server at base_url (e.g. http://127.0.0.1:8000) with its tokenizer."""
    from lm_eval.api.registry import get_model

    root = base_url.rstrip("/").removesuffix("/v1/completions").removesuffix("/v1")
    model_id = model_id or served_model_id(root)
    lm = get_model("local-completions")(model=model_id, base_url=f"{root}/v1/completions", tokenizer=tokenizer_path,
                                        tokenizer_backend="huggingface", tokenized_requests=True, batch_size=1,
                                        num_concurrent=1, max_retries=1)
    return _evaluate(lm, tasks, limit)


def served_model_id(root: str) -> str:
    """The first model id the server lists at /v1/models."""
    try:
        with urllib.request.urlopen(f"{root}/v1/models", timeout=30) as response:
            return json.load(response)["data"][0]["id"]
    except Exception as error:  # noqa: BLE001 - any failure to reach the server is one clear message
        raise ValueError(f"--server {root}: cannot list its models at /v1/models ({error}); is `dojo serve` "
                         f"running there?") from None


def _context_window(model) -> Optional[int]:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def _evaluate(lm, tasks: list[str], limit: Optional[int]) -> dict:
    import lm_eval

    names, folders = resolve_tasks(tasks)
    results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=task_manager(names, folders), limit=limit,
                                      bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    return {"metrics": flat_metrics(results["results"]), "loglikelihoods": loglikelihoods(results.get("samples", {}))}


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"lm_eval/TASK/METRIC": value} from the harness's results (its ",none" filter suffix and stderr dropped)."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in metric:
                flat[f"lm_eval/{task}/{metric}"] = float(value)
    return flat


def loglikelihoods(samples: dict[str, list[dict]]) -> dict[str, list[list[float]]]:
    """Per task, per document (in document order): the log-likelihood of each choice."""
    out = {}
    for task, docs in samples.items():
        ordered = sorted(docs, key=lambda doc: doc["doc_id"])
        out[task] = [[float(_first(resp)) for resp in doc["resps"]] for doc in ordered]
    return out


def _first(value):
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value
