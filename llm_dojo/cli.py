"""The `dojo` command: one subcommand per job; each lives in its own module and owns its arguments."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Optional

# subcommand -> (module with a `main(argv: list[str]) -> int`, one-line help)
COMMANDS = {
    "train": ("llm_dojo.recipes.sft", "fine-tune a model: dojo train CONFIG.yaml [key=value ...]"),
    "inspect": ("llm_dojo.data.preview", "show encoded samples with trained tokens highlighted, and dataset stats"),
    "template": ("llm_dojo.templates.cli", "list, show or render the official chat templates"),
    "chat": ("llm_dojo.infer.chat", "chat with a model (streaming), or answer one --prompt"),
    "generate": ("llm_dojo.infer.generate", "batched generation over a jsonl file of prompts"),
    "merge": ("llm_dojo.infer.merge", "merge an adapter into its base model and save a standalone model"),
    "serve": ("llm_dojo.serve.cli", "OpenAI-compatible HTTP server"),
    "bench": ("llm_dojo.bench", "throughput benchmark: HF Trainer vs TRL vs dojo"),
}


def usage() -> str:
    lines = ["usage: dojo COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `dojo COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `dojo` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dojo: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # bitsandbytes is imported by peft, which transformers imports for TrainingArguments, so every command would
    # start with its warning that the optional `kernels` package (faster 4-bit matmuls on a CPU) is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
