"""The `dojo` command: one subcommand per job; each lives in its own module and owns its arguments."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from typing import Optional

# subcommand -> (module with a `main(argv: list[str]) -> int`, one-line help)
COMMANDS = {
    "train": ("llm_dojo.recipes.sft", "fine-tune a model: dojo train CONFIG.yaml [key=value ...]"),
    "prepare": ("llm_dojo.data.store", "encode a config's data into the on-disk cache ahead of training"),
    "estimate": ("llm_dojo.estimate", "expected peak memory per device, and which training modes fit"),
    "inspect": ("llm_dojo.data.preview", "show encoded samples with trained tokens highlighted, and dataset stats"),
    "template": ("llm_dojo.templates.cli", "list, show or render the official chat templates"),
    "chat": ("llm_dojo.infer.chat", "chat with a model (streaming), or answer one --prompt"),
    "generate": ("llm_dojo.infer.generate", "batched generation over a jsonl file of prompts"),
    "merge": ("llm_dojo.infer.merge", "merge an adapter into its base model and save a standalone model"),
    "serve": ("llm_dojo.serve.cli", "OpenAI-compatible HTTP server"),
    "eval": ("llm_dojo.eval.cli", "held-out loss, answer metrics, lm-eval tasks; before/after report"),
    "bench": ("llm_dojo.bench", "throughput benchmark: HF Trainer vs TRL vs dojo"),
}


def usage() -> str:
    lines = ["usage: dojo COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `dojo COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `dojo` console script.

    One error style for every command: `dojo CMD: error: …` on stderr and exit code 2, never a traceback unless
    `--debug` (anywhere on the command line) or DOJO_DEBUG=1 asks for it; Ctrl-C exits 130 with one line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DOJO_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean: {close[0]}?" if close else ""
        print(f"dojo: error: unknown command {command!r}.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        if command == "train":  # path and value mistakes in seconds, before transformers is imported
            from llm_dojo.preflight import check_train_command

            check_train_command(rest)
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dojo {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns any failure into one clear line
        if debug:
            raise
        # Our own errors about the user's input already say what to fix; anything else may be a bug: say how to
        # see where it came from.
        expected = isinstance(error, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError))
        hint = "" if expected else f" ({type(error).__name__}; run with --debug for the traceback)"
        print(f"dojo {command}: error: {one_line(error)}{hint}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """An exception as one line: its message (or its type when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def configure_logging() -> None:
    """INFO logs on stderr; library chatter that tells the user nothing is silenced at its source."""
    # Under torchrun / accelerate launch every process runs this; only the first one tells the story (the Trainer
    # does the same for its own logs), the others speak up for warnings and errors.
    level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # bitsandbytes is imported by peft, which transformers imports for TrainingArguments, so every command would
    # start with its warning that the optional `kernels` package (faster 4-bit matmuls on a CPU) is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from llm_dojo.quiet import silence_library_warnings

    silence_library_warnings()


if __name__ == "__main__":
    sys.exit(main())
