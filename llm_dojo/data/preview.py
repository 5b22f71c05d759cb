"""`dojo inspect CONFIG [key=value ...]`: look at what the model will be trained on, before training it.

(The module is called preview, not inspect, so that it does not shadow the standard library's `inspect`.)

Shows N encoded samples exactly as rendered by the chat template, with the trained tokens highlighted
(green in a terminal; [[…]] brackets without colour), and dataset statistics. `--json` prints token ids,
token texts and labels for machines.
"""

from __future__ import annotations

import argparse
import json
import sys

from llm_dojo.config import ConfigError, load_config
from llm_dojo.data.encode import IGNORE_INDEX, EncodedSample, render_for_training
from llm_dojo.data.prepare import prepare_sft_data
from llm_dojo.data.sources import DataError
from llm_dojo.models.loading import load_tokenizer

TRAINED_ON = "\033[30;42m"  # black on green
MASKED_ON = "\033[2m"  # dim
RESET = "\033[0m"


def highlight(text: str, offsets: list[tuple[int, int]], labels: list[int], color: bool) -> str:
    """The rendered text with trained tokens marked (colour, or [[…]] when colour is off)."""
    pieces, cursor, in_trained = [], 0, False
    open_mark, close_mark = (TRAINED_ON, RESET + MASKED_ON) if color else ("[[", "]]")
    pieces.append(MASKED_ON if color else "")
    for (start, end), label in zip(offsets, labels):
        trained = label != IGNORE_INDEX
        if trained != in_trained:
            pieces.append(text[cursor:start])
            cursor = start
            pieces.append(open_mark if trained else close_mark)
            in_trained = trained
        pieces.append(text[cursor:end])
        cursor = end
    if in_trained:
        pieces.append(close_mark)
    pieces.append(RESET if color else "")
    return "".join(pieces)


def sample_json(tokenizer, sample: EncodedSample) -> dict:
    """One sample for `--json`: ids, token strings, labels and the decoded trained text."""
    return {
        "source": sample.source,
        "input_ids": sample.input_ids,
        "tokens": tokenizer.convert_ids_to_tokens(sample.input_ids),
        "labels": sample.labels,
        "trained_text": trained_text(tokenizer, sample.input_ids, sample.labels),
    }


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The trained tokens (label != -100) decoded, joined."""
    return tokenizer.decode([t for t, label in zip(input_ids, labels) if label != IGNORE_INDEX])


def main(argv: list[str]) -> int:
    """Entry point of `dojo inspect`."""
    parser = argparse.ArgumentParser(prog="dojo inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="training config YAML (the same file `dojo train` takes)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for dojo train")
    parser.add_argument("-n", "--num-samples", type=int, default=3, help="how many samples to show (default 3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output: ids, tokens, labels, stats")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="highlight trained tokens in colour (auto: when stdout is a terminal)")
    args = parser.parse_args(argv)
    config_path = args.config if args.config and "=" not in args.config else None
    overrides = ([args.config] if args.config and not config_path else []) + args.overrides
    try:
        config = load_config(config_path, overrides)
        tokenizer = load_tokenizer(config.model.model_name_or_path, config.model.trust_remote_code)
        if config.stage.stage != "sft":
            return show_preference_data(config, tokenizer, args)
        prepared = prepare_sft_data(config.data, tokenizer, config.training.seed, with_eval=False)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"dojo inspect: error: {err}", file=sys.stderr)
        return 2

    chat_format, conversations, report = prepared.chat_format, prepared.conversations, prepared.report
    samples, stats = prepared.train, prepared.stats
    statistics = {
        "records": report.records, "skipped_invalid": report.skipped, "samples": stats.samples,
        "tokens": stats.tokens, "trained_tokens": stats.trained_tokens,
        "trained_fraction": round(stats.trained_tokens / max(1, stats.tokens), 4),
        "length_p10": stats.percentile(10), "length_p50": stats.percentile(50), "length_p90": stats.percentile(90),
        "length_max": max(stats.lengths, default=0), "truncated": stats.truncated,
        "dropped_no_label": stats.dropped_no_label, "template": chat_format.name,
        "terminator": chat_format.terminator, "stop_tokens": list(chat_format.stop_tokens),
    }
    shown = samples[: max(0, args.num_samples)]
    if args.json:
        print(json.dumps({"stats": statistics, "samples": [sample_json(tokenizer, s) for s in shown]},
                         ensure_ascii=False))
        return 0

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    by_source = {c.source: c for c in conversations}
    for sample in shown:
        conversation = by_source[sample.source]
        text = render_for_training(conversation.messages, tokenizer, chat_format, conversation.tools)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        print(f"── {sample.source} · {len(sample.input_ids)} tokens, {sample.num_trained} trained "
              f"{'(truncated)' if sample.truncated else ''}")
        print(highlight(text, offsets[: len(sample.labels)], sample.labels, color))
        print()
    legend = f"{TRAINED_ON}trained{RESET}" if color else "[[trained]]"
    print(f"legend: {legend}, everything else masked (-100)")
    print(f"template: {chat_format.name}, terminator {chat_format.terminator!r}")
    print(f"records: {report.records} read, {report.skipped} skipped as invalid")
    print(f"samples: {stats.summary()}")
    print(f"length percentiles: p10 {statistics['length_p10']}, p50 {statistics['length_p50']}, "
          f"p90 {statistics['length_p90']}, max {statistics['length_max']}")
    return 0


def side_by_side(left: str, right: str, titles: tuple[str, str], width: int) -> str:
    """Two texts in columns of `width` characters each (wrapped, line breaks kept)."""
    import textwrap

    def lines(text: str) -> list[str]:
        return [piece for line in text.splitlines() or [""] for piece in textwrap.wrap(line, width) or [""]]

    left_lines, right_lines = [titles[0]] + lines(left), [titles[1]] + lines(right)
    rows = max(len(left_lines), len(right_lines))
    left_lines += [""] * (rows - len(left_lines))
    right_lines += [""] * (rows - len(right_lines))
    return "\n".join(f"{a:<{width}} │ {b}" for a, b in zip(left_lines, right_lines))


def show_preference_data(config, tokenizer, args) -> int:
    """Pairs (or KTO examples): the shared prompt once, then what is trained of each answer, side by side."""
    import shutil

    from llm_dojo.data.preference import first_trained, prepare_preference_data

    prepared = prepare_preference_data(config.data, config.stage.stage, tokenizer, config.training.seed)
    kto = config.stage.stage == "kto"
    shown = prepared.train[: max(0, args.num_samples)]

    if args.json:
        keys = ("input_ids", "labels") if kto else ("chosen_input_ids", "chosen_labels", "rejected_input_ids",
                                                    "rejected_labels")
        items = [{**{k: item[k] for k in keys}, **({"desirable": item["desirable"]} if kto else {}),
                  **({"trained_text": trained_text(tokenizer, item["input_ids"], item["labels"])} if kto else
                     {"chosen_trained_text": trained_text(tokenizer, item["chosen_input_ids"], item["chosen_labels"]),
                      "rejected_trained_text": trained_text(tokenizer, item["rejected_input_ids"], item["rejected_labels"])})}
                 for item in shown]
        stats = prepared.stats
        print(json.dumps({"stats": {"stage": config.stage.stage, "examples": stats.examples, "tokens": stats.tokens,
                                    "trained_tokens": stats.trained_tokens, "dropped_too_long": stats.too_long,
                                    "template": prepared.chat_format.name}, "examples": items}, ensure_ascii=False))
        return 0
    width = max(30, min(70, (shutil.get_terminal_size((120, 40)).columns - 3) // 2))
    for index, item in enumerate(shown):
        ids = item["input_ids"] if kto else item["chosen_input_ids"]
        labels = item["labels"] if kto else item["chosen_labels"]
        print(f"── example {index + 1}: prompt as rendered (not trained)")
        print(tokenizer.decode(ids[:first_trained(labels)]))
        if kto:
            verdict = "desirable" if item["desirable"] else "undesirable"
            print(f"── trained answer ({verdict}), {sum(l != IGNORE_INDEX for l in labels)} tokens")
            print(trained_text(tokenizer, ids, labels))
        else:
            counts = [sum(l != IGNORE_INDEX for l in item[f"{side}_labels"]) for side in ("chosen", "rejected")]
            print(side_by_side(trained_text(tokenizer, item["chosen_input_ids"], item["chosen_labels"]),
                               trained_text(tokenizer, item["rejected_input_ids"], item["rejected_labels"]),
                               (f"chosen (trained, {counts[0]} tokens)", f"rejected (trained, {counts[1]} tokens)"),
                               width))
        print()
    print(f"template: {prepared.chat_format.name}, terminator {prepared.chat_format.terminator!r}")
    print(f"records: {prepared.report.records} read, {prepared.report.skipped} skipped as invalid")
    print(f"{config.stage.stage}: {prepared.stats.summary('examples' if kto else 'pairs')}")
    return 0
