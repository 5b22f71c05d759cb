"""`dojo generate`: answer every prompt of a jsonl file, in batches, and write the answers to another jsonl file.

    dojo generate --adapter outputs/run --input prompts.jsonl --output answers.jsonl --batch-size 8

Each input line is one of `{"prompt": ...}`, `{"instruction": ..., "input": ...}` or `{"messages": [...]}`
(blank lines are skipped). Each output line is the input object with an added `"answer"`, in input order.
Output is appended and flushed after every batch, so an interrupted run resumes where it stopped: lines already in
the output file are checked against the input and skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1")
    try:  # fail on a bad line before spending time on loading the model
        records = read_records(args.input)
        done = count_done(args.output, records)
    except (ValueError, FileNotFoundError) as error:
        print(f"dojo generate: error: {error}", file=sys.stderr)
        return 2
    if done == len(records):
        logger.info("%s already holds all %d answers; nothing to do", args.output, done)
        return 0
    loaded = load_from_args(args)
    written = run(loaded.model, loaded.tokenizer, args.input, args.output, batch_size=args.batch_size,
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  system=args.system, records=records, stop_ids=loaded.stop_ids)
    logger.info("wrote %d answers to %s", written, args.output)
    return 0
