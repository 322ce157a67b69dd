"""Check a preference data file before training: what loads, what is skipped and why, and shape.

``pluralign validate-data FILE`` runs the checks training runs, with the same functions
(:func:`~pluralign.data.loaders.load_preferences`, then
:func:`~pluralign.data.tokenize.tokenize_records` with the run's tokenizer and lengths): rows that
are malformed or degenerate, mixed formats, weights, empty prompts, responses identical after
truncation. Rows are loaded with ``on_error="skip"`` so that every problem is listed. It prints the
load summary (counts by record kind, skips by reason, the first problems naming file, row and
field), the tokenization summary and data set statistics, and exits 0 when every row is usable, 1
when any row was skipped (a run with ``data.on_error=raise`` stops at the first such malformed row)
and 2 when the file cannot be used at all (unreadable, unknown or mixed format, empty, nothing
left).

The tokenizer and lengths are those of a run: ``--recipe`` takes them from a recipe; without it,
the defaults of :class:`pluralign.train.config.RunConfig` (the offline ``byte`` tokenizer, lengths
1024 / 512); ``--tokenizer``, ``--max-length``, ``--max-prompt-length`` and ``--ties`` override.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pluralign.data.loaders import (
    MAX_PROBLEMS,
    LoadReport,
    always_skipped,
    check_usable,
    load_preferences,
)
from pluralign.data.identifiability import identifiability
from pluralign.data.records import TIE_POLICIES, PreferenceRecord
from pluralign.errors import PluralignError, one_line


@dataclass
class DatasetStatistics:
    """Shape of a loaded data set.

    ``num_responses_distribution`` maps K to the number of records with K responses. Character
    statistics count Python string characters; response statistics run over every response of every
    record. ``num_duplicate_records`` counts records equal in every field to an earlier record;
    ``num_records_with_identical_responses`` counts records holding the same response text twice
    (a preference between identical texts carries no signal).
    """

    num_responses_distribution: dict[int, int] = field(default_factory=dict)
    prompt_chars_mean: float = 0.0
    prompt_chars_max: int = 0
    response_chars_mean: float = 0.0
    response_chars_max: int = 0
    num_annotators: int = 0
    num_duplicate_records: int = 0
    num_records_with_identical_responses: int = 0

    def summary_lines(self) -> list[str]:
        k_distribution = ", ".join(f"K={k}: {n}" for k, n in
                                   sorted(self.num_responses_distribution.items()))
        return [
            "statistics:",
            f"  responses per record: {k_distribution or 'none'}",
            f"  prompt characters: mean {self.prompt_chars_mean:.1f}, max {self.prompt_chars_max}",
            f"  response characters: mean {self.response_chars_mean:.1f}, "
            f"max {self.response_chars_max}",
            f"  annotators: {self.num_annotators}",
            f"  duplicate records: {self.num_duplicate_records}",
            f"  records with identical responses: {self.num_records_with_identical_responses}",
        ]


def compute_statistics(records: list[PreferenceRecord]) -> DatasetStatistics:
    """Statistics of ``records`` (see :class:`DatasetStatistics`); all zero for an empty list."""
    stats = DatasetStatistics()
    if not records:
        return stats
    counts = Counter(r.num_responses for r in records)
    stats.num_responses_distribution = dict(sorted(counts.items()))
    prompt_lengths = [len(r.prompt) for r in records]
    response_lengths = [len(text) for r in records for text in r.responses]
    stats.prompt_chars_mean = sum(prompt_lengths) / len(prompt_lengths)
    stats.prompt_chars_max = max(prompt_lengths)
    stats.response_chars_mean = sum(response_lengths) / len(response_lengths)
    stats.response_chars_max = max(response_lengths)
    stats.num_annotators = len({r.annotator_id for r in records if r.annotator_id is not None})
    stats.num_duplicate_records = len(records) - len(set(records))
    stats.num_records_with_identical_responses = sum(
        len(set(r.responses)) < r.num_responses for r in records)
    return stats


def validate_file(path: Any, *, tokenizer: Any = None, ties: str = "truncate",
                  max_length: int = 1024, max_prompt_length: int = 512) -> LoadReport:
    """Load ``path`` with ``on_error="skip"``; return its report with ``statistics`` filled and,
    when a ``tokenizer`` is given, ``tokenization`` (what training's tokenization keeps and skips).

    Raises :class:`DataError` only when the file as a whole cannot be trained on (unreadable,
    unknown or mixed row format, no rows, no usable records, all weights 0); every row-level
    problem is counted in the report instead.
    """
    from pluralign.data.tokenize import tokenize_records

    result = load_preferences(path, tokenizer=tokenizer, on_error="skip", ties=ties,
                              allow_empty=True)
    report = result.report
    report.statistics = compute_statistics(result.records)
    report.identifiability = identifiability(result.records)  # can the data identify annotator types?
    check_usable(result.records, report)
    if tokenizer is not None:
        report.tokenization = tokenize_records(result.records, tokenizer, max_length=max_length,
                                               max_prompt_length=max_prompt_length)
        report.tokenization_settings = (f"max_length {max_length}, "
                                        f"max_prompt_length {max_prompt_length}")
    return report


def validate_command(args: argparse.Namespace) -> int:
    """CLI entry: print the validation summary; exit code 0 clean, 1 rows skipped, 2 file error.

    ``args`` has ``path`` and optionally ``recipe`` (a list: path, then overrides), ``tokenizer``, ``ties``,
    ``max_length``, ``max_prompt_length`` and ``max_problems`` (see :func:`add_validate_parser`).
    """
    max_problems = getattr(args, "max_problems", None)
    max_problems = MAX_PROBLEMS if max_problems is None else max_problems
    try:
        settings = _run_settings(args)
        tokenizer = _load_tokenizer(settings["tokenizer"])
        report = validate_file(args.path, tokenizer=tokenizer, ties=settings["ties"],
                               max_length=settings["max_length"],
                               max_prompt_length=settings["max_prompt_length"])
    except PluralignError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    report.tokenization_settings = f"tokenizer {settings['tokenizer']}, " + \
        report.tokenization_settings
    print(report.summary(max_problems=max_problems))
    print("\n".join(report.identifiability.summary_lines()))
    stopping = report.skipped - sum(report.skipped_by_reason.get(reason, 0)
                                    for reason in always_skipped(settings["ties"]))
    if stopping and settings["on_error"] == "raise":
        print(f"note: with data.on_error=raise a run stops at the first of these {stopping} "
              "malformed rows; fix them or set data.on_error=skip")
    skipped = report.skipped + report.tokenization.num_skipped
    return 1 if skipped else 0


def _run_settings(args: argparse.Namespace) -> dict:
    """Tokenizer name, tie policy and lengths: flags, else the recipe's, else a run's defaults."""
    from pluralign.train.config import RunConfig, load_config

    recipe = getattr(args, "recipe", None)  # [path, override, ...]
    cfg = load_config(recipe[0], recipe[1:]) if recipe else RunConfig()
    chosen = {
        "tokenizer": cfg.model.tokenizer or cfg.model.name,
        "ties": cfg.data.ties,
        "max_length": cfg.data.max_length,
        "max_prompt_length": cfg.data.max_prompt_length,
        "on_error": cfg.data.on_error,
    }
    for key in chosen:
        value = getattr(args, key, None)
        if value is not None:
            chosen[key] = value
    return chosen


def _load_tokenizer(name: str):
    from pluralign.models import load_tokenizer  # heavy import (transformers), only here

    try:
        return load_tokenizer(name)
    except (OSError, ValueError) as error:
        raise PluralignError(f"cannot load tokenizer {name!r}: {error}") from None


def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``validate-data FILE [--recipe RECIPE [KEY=VALUE ...]] [--tokenizer NAME] [--ties ...]
    [--max-length N] [--max-prompt-length N] [--max-problems N]``."""
    parser = subparsers.add_parser(
        "validate-data",
        help="check a preference data file with training's checks: loadable rows, skips by "
             "reason, tokenization, statistics",
        description="Load a preference data file (jsonl, jsonl.gz, json, parquet, csv) and "
                    "tokenize it as training would; report every skipped row by reason and the "
                    "data set's shape. Exit code 0: all rows usable; 1: some rows were skipped; "
                    "2: the file cannot be used.",
    )
    parser.add_argument("path", metavar="FILE", help="preference data file")
    parser.add_argument("--recipe", nargs="+", default=None, metavar=("RECIPE", "KEY=VALUE"),
                        help="take the tokenizer, tie policy and lengths from this YAML recipe, "
                             "with overrides as for 'pluralign train' (after FILE; default: the "
                             "defaults of a run)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer: a built-in name (byte, tiny) or a Hub id / local folder "
                             "(default: the recipe's, else byte); its chat template renders "
                             "conversational rows")
    parser.add_argument("--ties", choices=TIE_POLICIES, default=None,
                        help="how tied scores become rankings (default: the recipe's, else "
                             "truncate at the first tie)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="prompt + response tokens (default: the recipe's, else 1024)")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="prompt tokens kept when truncating (default: the recipe's, else 512)")
    parser.add_argument("--max-problems", type=int, default=MAX_PROBLEMS,
                        help=f"problem messages to list (default: {MAX_PROBLEMS}; at most "
                             f"{MAX_PROBLEMS} are kept)")
    parser.set_defaults(func=validate_command)
    return parser
