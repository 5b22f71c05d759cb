"""The bundled task's data: read from the jsonl file beside this module, whatever the working directory."""

import json
from pathlib import Path

DATA = Path(__file__).with_name("dojo_mini_mc.jsonl")


def load_docs(**_metadata):
    """{"test": Dataset} of the questions (lm-eval passes the task's metadata as keyword arguments)."""
    import datasets

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
