"""`dojo generate`: answer every prompt of a jsonl file, in batches, and write the answers to another jsonl file.

    dojo generate --adapter outputs/run --input prompts.jsonl --output answers.jsonl --batch-size 8

Each input line is one of `{"prompt": ...}`, `{"instruction": ..., "input": ...}` or `{"messages": [...]}`
(blank lines are skipped). Each output line is the input object with an added `"answer"`, in input order.
Output is appended and flushed after every batch, so an interrupted run (Ctrl-C included) resumes where it stopped:
lines already in the output file are checked against the input and skipped.

The settings that shape the answers (model, adapter, dtype, 4-bit, sampling, system prompt, chat format and stop
tokens) are kept beside the output in `<output>.meta.json`. A rerun that asks for different settings is refused
before the model loads, so one file never mixes the answers of two models or two sampling settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from llm_dojo.infer.common import (
    add_model_arguments,
    add_sampling_arguments,
    cut_at_stop,
    encode_chat,
    generation_config,
    left_padded_batch,
    load_from_args,
    pad_token_id,
    record_to_messages,
    stop_token_ids,
    with_system,
)

logger = logging.getLogger(__name__)

# The settings compared on resume, and how the refusal names them. The first group is known from the arguments
# alone (checked before loading the model); chat format and stop tokens only once the tokenizer is loaded.
SETTING_NAMES = {"model": "model", "adapter": "adapter", "dtype": "dtype", "load_in_4bit": "load_in_4bit",
                 "temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_new_tokens",
                 "system": "system prompt", "chat_format": "chat format", "stop_tokens": "stop tokens"}


def read_records(path: Path) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    """Parse and check every input line up front: (record, messages) per non-blank line, errors name line and field."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    records = []
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a leading BOM (Windows tools) is not data
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if isinstance(record, dict) and "answer" in record:
                raise ValueError(f"{where}, field 'answer': input lines must not have an 'answer' field "
                                 f"(it would be overwritten); rename it")
            records.append((record, record_to_messages(record, where)))
    return records


def count_done(output: Path, records: list[tuple[dict[str, Any], Any]]) -> int:
    """How many answers the output file already holds; drops a torn last line and checks they match the input."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        logger.warning("%s: dropping an incomplete last line left by an interrupted run", output)
        output.write_bytes(complete)
    lines = complete.decode("utf-8").splitlines()
    if len(lines) > len(records):
        raise ValueError(f"{output} has {len(lines)} lines but the input has only {len(records)} prompts; "
                         f"is it the output of another input? Delete it or choose another --output")
    for line_number, (line, (record, _)) in enumerate(zip(lines, records), start=1):
        try:
            written = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{output}, line {line_number}: not valid JSON; delete the file to start over") from None
        written.pop("answer", None)
        if written != record:
            raise ValueError(f"{output}, line {line_number} does not match input line {line_number}: the output "
                             f"belongs to another input file. Delete it or choose another --output")
    return len(lines)


def answers_in(output: Path) -> int:
    """How many complete lines (answers) the output file holds now."""
    return output.read_bytes().count(b"\n") if output.exists() else 0


# ------------------------------------------------------------------ the run's settings, kept beside the output


def meta_path(output: Path) -> Path:
    """Where the settings of the run that wrote `output` are kept: `<output>.meta.json`."""
    return output.with_name(output.name + ".meta.json")


def canonical_base(name: str) -> str:
    """A base model named the same way whatever the spelling: the embedded alias, an absolute folder, or a hub id."""
    from llm_dojo.models.embedded import EMBEDDED_ALIAS

    if name.strip().lower() == EMBEDDED_ALIAS:
        return EMBEDDED_ALIAS
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.exists() else name


def requested_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that shape the answers, as the arguments ask for them (cheap: reads no weights)."""
    from llm_dojo.models.loading import parse_dtype, read_adapter_base, trained_in_4bit

    base = args.model or read_adapter_base(args.adapter)
    load_in_4bit = args.load_in_4bit if args.load_in_4bit is not None else bool(trained_in_4bit(args.adapter))
    return {
        "model": canonical_base(base),
        "model_as_given": args.model,  # None: the adapter's base
        "adapter": str(Path(args.adapter).expanduser().resolve()) if args.adapter else None,
        "dtype": str(parse_dtype(args.dtype)).removeprefix("torch."),  # "auto" resolved: float32 on a CPU
        "load_in_4bit": load_in_4bit,
        "temperature": args.temperature,
        "top_p": args.top_p if args.temperature != 0 else None,  # greedy decoding ignores top_p
        "max_new_tokens": args.max_new_tokens,
        "system": args.system,
    }


def loaded_settings(loaded) -> dict[str, Any]:
    """The settings only known once the tokenizer is loaded: the resolved base path, chat format and stop tokens."""
    return {"model_path": loaded.base, "chat_format": loaded.chat_format.name,
            "stop_tokens": list(loaded.tokenizer.convert_ids_to_tokens(loaded.stop_ids))}


def read_meta(output: Path) -> Optional[dict[str, Any]]:
    """The settings recorded beside `output`, or None (with a warning) for an output written before they were kept."""
    path = meta_path(output)
    if not path.exists():
        logger.warning("%s has answers but no %s (an older dojo generate wrote it): cannot check they were made with "
                       "this run's settings; continuing, and recording this run's settings", output, path.name)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not valid JSON; delete {output} and {path} to start over") from None


def check_same_settings(output: Path, recorded: Optional[dict[str, Any]], wanted: dict[str, Any]) -> None:
    """Refuse to resume `output` with settings other than those it was made with (only settings both sides know)."""
    if recorded is None:
        return
    differing = [key for key in SETTING_NAMES if key in recorded and key in wanted and recorded[key] != wanted[key]]
    if None in (recorded.get("top_p"), wanted.get("top_p")) and "top_p" in differing:
        differing.remove("top_p")  # greedy on one side: the temperature already names the difference
    if not differing:
        return

    def describe(settings: dict[str, Any]) -> str:
        parts = [f"{SETTING_NAMES[key]} {show(key, settings[key])}" for key in differing]
        return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]

    raise ValueError(f"{output} was made with {describe(recorded)}; this run asks for {describe(wanted)}. "
                     f"Use another --output, or delete {output} and {meta_path(output)} to start over")


def show(key: str, value: Any) -> str:
    """One setting's value as the refusal prints it."""
    if value is None:
        return "none"
    if key == "system":
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    return str(value)


def write_meta(output: Path, settings: dict[str, Any]) -> None:
    """Record the run's settings beside `output`, atomically (a crash never leaves half a file)."""
    path = meta_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------ generation


def generate_batch(model, tokenizer, prompts: list[list[int]], config, stop_ids: list[int]) -> list[str]:
    """Answers for a batch of tokenized prompts (left-padded together)."""
    batch = left_padded_batch(tokenizer, prompts, model.device)
    with torch.inference_mode():
        output = model.generate(**batch, generation_config=config)
    answers = []
    for row in output[:, batch["input_ids"].shape[1]:].tolist():
        answer_ids, _ = cut_at_stop(row, stop_ids)
        answers.append(tokenizer.decode(answer_ids, skip_special_tokens=True))
    return answers


def run(model, tokenizer, input_path: Path, output_path: Path, *, batch_size: int = 8, max_new_tokens: int = 512,
        temperature: float = 0.0, top_p: float = 1.0, system: Optional[str] = None,
        records: Optional[list] = None, stop_ids: Optional[list[int]] = None) -> int:
    """Generate the missing answers of `input_path` into `output_path`; returns how many were written."""
    records = records if records is not None else read_records(input_path)
    done = count_done(output_path, records)
    todo = records[done:]
    if done:
        logger.info("%s already holds %d of %d answers; generating the remaining %d", output_path, done, len(records), len(todo))
    stop_ids = stop_ids or stop_token_ids(tokenizer, model)
    config = generation_config(stop_ids, pad_token_id(tokenizer), max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("a", encoding="utf-8") as out, tqdm(total=len(todo), desc="generate", unit="prompt",
                                                              file=sys.stderr) as progress:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            prompts = [encode_chat(tokenizer, with_system(messages, system)) for _, messages in chunk]
            answers = generate_batch(model, tokenizer, prompts, config, stop_ids)
            for (record, _), answer in zip(chunk, answers):
                out.write(json.dumps({**record, "answer": answer}, ensure_ascii=False) + "\n")
            out.flush()
            progress.update(len(chunk))
    return len(todo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dojo generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, type=Path, help="jsonl file of prompts")
    parser.add_argument("--output", required=True, type=Path, help="jsonl file to append answers to (resumable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--system", help="system prompt for records without one (default: the template's)")
    add_sampling_arguments(parser, temperature=0.0, max_new_tokens=512)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `dojo generate`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.model is None and args.adapter is None:
        parser.error("give --model, --adapter, or both")
    # Everything that can be checked without the model is checked first: a bad line, or a resume with other
    # settings, should not cost a model load.
    try:
        records = read_records(args.input)
        done = count_done(args.output, records)
        settings = requested_settings(args)
        recorded = read_meta(args.output) if done else None
        check_same_settings(args.output, recorded, settings)
    except (ValueError, FileNotFoundError) as error:
        print(f"dojo generate: error: {error}", file=sys.stderr)
        return 2
    if done == len(records):
        logger.info("%s already holds all %d answers; nothing to do", args.output, done)
        return 0
    try:
        loaded = load_from_args(args)
        settings.update(loaded_settings(loaded))
        try:
            check_same_settings(args.output, recorded, settings)
        except ValueError as error:
            print(f"dojo generate: error: {error}", file=sys.stderr)
            return 2
        write_meta(args.output, settings)
        written = run(loaded.model, loaded.tokenizer, args.input, args.output, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      system=args.system, records=records, stop_ids=loaded.stop_ids)
    except KeyboardInterrupt:
        # Every finished batch is already flushed to the output, so the rerun picks up from here.
        print(f"dojo generate: interrupted after {answers_in(args.output)} of {len(records)} answers; "
              f"rerun the same command to resume", file=sys.stderr)
        return 130
    logger.info("wrote %d answers to %s", written, args.output)
    return 0
