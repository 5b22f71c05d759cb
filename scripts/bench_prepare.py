"""Data preparation at scale: `dojo prepare` against TRL's SFTTrainer on the same generated file, then what a second
`dojo train` costs once the cache is there (docs/benchmarks.md, "Data at scale").

    .venv/bin/python scripts/bench_prepare.py [--records 1000000] [--workdir /tmp/dojo-prepare-bench] [--procs 2]

Every measurement runs in a fresh process whose peak RSS is sampled by the parent (psutil, every 50 ms):
  1. trl      load_dataset("json") + SFTTrainer(...) construction (tokenisation), dataset_num_proc=procs, fresh cache
  2. prepare  dojo's open_training_data (read, check, encode, Arrow cache), dataset_num_proc=procs, fresh cache
  3. train    `dojo train` on the full file with the cache warm, 3 steps: seconds from process start to the first
              step's start and end, and peak RSS
  4. small    the same training on the file's first 1,000 records: the RSS the model and training need anyway
              (compared at the first step's start, before any activation, and at the peak, which also depends on
              how long the three batches' samples happen to be)
The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SETTINGS = ["lora_dropout=0.05", "max_len=1024", "per_device_train_batch_size=8", "logging_steps=1",
                  "disable_tqdm=true", "max_steps=3", "report_to=none", "save_strategy=no"]


def make_data(path: Path, records: int) -> None:
    """`records` generated conversations (llm_dojo/bench_data.py), written 100,000 at a time."""
    from llm_dojo.bench_data import make_records

    if path.exists() and sum(1 for _ in open(path, "rb")) == records:
        return
    temporary = path.with_suffix(".partial")
    with open(temporary, "w", encoding="utf-8") as handle:
        for seed, start in enumerate(range(0, records, 100_000)):
            for record in make_records(min(100_000, records - start), seed=seed):
                handle.write(json.dumps({"messages": record["messages"]}, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def measured(code: str, env: dict) -> dict:
    """Run `code` in a fresh Python; return the JSON it prints last, plus its wall time and peak RSS (MB)."""
    started = time.time()
    log = tempfile.TemporaryFile(mode="w+")  # a pipe would fill with progress bars and block the child
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=log, text=True)
    watched, peak_all, peak_own = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:  # the process itself, and with its worker processes (encoding pools)
            own = watched.memory_info().rss
            peak_all = max(peak_all, own + sum(c.memory_info().rss for c in watched.children(recursive=True)))
            peak_own = max(peak_own, own)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, _ = process.communicate()
    if process.returncode != 0:
        log.seek(0)
        raise SystemExit(f"child failed:\n{log.read()[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=round(time.time() - started, 1), peak_rss_mb=round(peak_own / 2**20),
                  peak_rss_mb_with_workers=round(peak_all / 2**20))
    return result


TRL = """
import json, time
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from llm_dojo.models.embedded import embedded_model_path
path = embedded_model_path()
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
started = time.time()
data = load_dataset("json", data_files={data!r}, split="train")
SFTTrainer(model=model, processing_class=tokenizer, train_dataset=data,
           args=SFTConfig(output_dir={out!r}, dataset_num_proc={procs}, max_length=1024, report_to="none",
                          use_cpu=True))
print(json.dumps({{"prepare_s": round(time.time() - started, 1)}}))
"""

PREPARE = """
import json, time
from llm_dojo.config import load_config
from llm_dojo.data.store import open_training_data
from llm_dojo.models.loading import load_tokenizer
config = load_config(None, ["train_data_path={data}", "dataset_num_proc={procs}", "max_len=1024"])
tokenizer = load_tokenizer(config.model.model_name_or_path)
started = time.time()
data = open_training_data(config.data, tokenizer)
print(json.dumps({{"prepare_s": round(time.time() - started, 1), "samples": data.stats.samples,
                  "tokens": data.stats.tokens}}))
"""

TRAIN = """
import json, time, psutil
from transformers import TrainerCallback
import llm_dojo.recipes.sft as sft
from llm_dojo.config import load_config
born = psutil.Process().create_time()
marks = {{}}
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        marks.setdefault("first_step_start_s", round(time.time() - born, 1))
        # Model, data and Trainer are all set up here, before any activation: the data's own share shows.
        marks.setdefault("rss_at_first_step_mb", round(psutil.Process().memory_info().rss / 2**20))
    def on_step_end(self, args, state, control, **kwargs):
        marks.setdefault("first_step_end_s", round(time.time() - born, 1))
callbacks = sft.training_callbacks
sft.training_callbacks = lambda args: callbacks(args) + [Clock()]
summary = sft.train(load_config(None, ["train_data_path={data}", "output_dir={out}", "overwrite_output_dir=true",
                                       *{settings!r}]))
marks.update(steps=summary["steps"], samples=summary["samples"])
print(json.dumps(marks))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/dojo-prepare-bench")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--skip-trl", action="store_true", help="measure dojo only (TRL takes the longest)")
    parser.add_argument("--prepare-only", action="store_true", help="measure the two preparations, no training")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, small = work / f"chat-{args.records}.jsonl", work / "chat-first-1000.jsonl"
    make_data(data, args.records)
    with open(data, "rb") as source, open(small, "wb") as target:
        target.writelines(line for _, line in zip(range(1000), source))
    stamp = str(time.time_ns())
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / f"hf-{stamp}"), "DOJO_CACHE_DIR": str(work / f"dojo-{stamp}"),
           "TOKENIZERS_PARALLELISM": "false"}
    results = {"records": args.records, "procs": args.procs, "file_mb": round(data.stat().st_size / 2**20)}
    if not args.skip_trl:
        results["trl"] = measured(TRL.format(data=str(data), out=str(work / "trl-out"), procs=args.procs), env)
        print("trl:", results["trl"], file=sys.stderr)
    results["prepare"] = measured(PREPARE.format(data=str(data), procs=args.procs), env)
    print("dojo prepare:", results["prepare"], file=sys.stderr)
    if args.prepare_only:
        print(json.dumps(results))
        return
    results["train"] = measured(TRAIN.format(data=str(data), out=str(work / "run"), settings=TRAIN_SETTINGS), env)
    print("dojo train, cache warm:", results["train"], file=sys.stderr)
    measured(PREPARE.format(data=str(small), procs=args.procs), env)  # its cache first, so only training is measured
    results["small"] = measured(TRAIN.format(data=str(small), out=str(work / "run-small"), settings=TRAIN_SETTINGS),
                                env)
    print("dojo train, 1,000 records:", results["small"], file=sys.stderr)
    results["data_rss_mb_at_first_step"] = (results["train"]["rss_at_first_step_mb"]
                                            - results["small"]["rss_at_first_step_mb"])
    results["data_rss_mb_at_peak"] = results["train"]["peak_rss_mb"] - results["small"]["peak_rss_mb"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
