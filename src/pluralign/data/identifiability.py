"""Can a data set identify latent annotator types? (Chidambaram et al. 2510.15716; PAPERS.md 4.2)

With ONE binary comparison per annotator the distribution of annotator types is not identifiable,
even with infinitely many annotators (Lemma 4.1: a 50/50 mixture of two opposite types gives every
pair probability 1/2, exactly like one indifferent type). Rankings of 3 or more responses, even
incomplete ones (a top-1 of 3), identify it (Theorem 4.2); many diverse comparisons from one
annotator identify that annotator's preferences (Lemma 4.3).

    report = identifiability(records)
    print("\\n".join(report.summary_lines()))
    report.warnings   # [] when nothing stands in the way of identifying types
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pluralign.data.records import PreferenceRecord


def _spread(values) -> dict[str, float]:
    if not len(values):
        return {"min": 0, "median": 0, "max": 0}
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


@dataclass
class IdentifiabilityReport:
    """Per-annotator counts: ``comparisons`` are the pairwise relations the records imply
    (:meth:`PreferenceRecord.implied_pairs`; a pair is 1, a full ranking of 3 is 3);
    ``distinct_rankings`` are distinct (prompt, responses, ranking) records over 3+ responses."""

    num_records: int
    num_annotators: int
    records_without_annotator: int
    comparisons_per_annotator: dict[str, float]
    distinct_rankings_per_annotator: dict[str, float]
    annotators_with_rankings_of_3plus: int
    annotators_with_one_binary_comparison_only: int
    warnings: list[str] = field(default_factory=list)

    @property
    def identifiable(self) -> bool:
        return not self.warnings

    def summary_lines(self) -> list[str]:
        c, d = self.comparisons_per_annotator, self.distinct_rankings_per_annotator
        fmt = lambda s: f"min {s['min']:g}, median {s['median']:g}, max {s['max']:g}"  # noqa: E731
        lines = [
            "identifiability of annotator types:",
            f"  annotators: {self.num_annotators} ({self.records_without_annotator} records without annotator_id)",
            f"  comparisons per annotator: {fmt(c)}",
            f"  distinct rankings of 3+ responses per annotator: {fmt(d)}",
            f"  annotators with a ranking of 3+ responses: {self.annotators_with_rankings_of_3plus}",
            f"  annotators whose only vote is one binary comparison: {self.annotators_with_one_binary_comparison_only}",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        if not self.warnings:
            lines.append("  nothing stands in the way of identifying types (rankings of 3+, or several "
                         "comparisons per annotator)")
        return lines

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"identifiable": self.identifiable}


def identifiability(records: list[PreferenceRecord]) -> IdentifiabilityReport:
    """The counts of :class:`IdentifiabilityReport` and a warning, saying why, whenever the data
    cannot identify annotator types: no annotator ids, or only binary comparisons with one per
    annotator."""
    comparisons: dict[str, int] = defaultdict(int)
    rankings: dict[str, set] = defaultdict(set)
    binary_records: dict[str, int] = defaultdict(int)
    anonymous = 0
    for rec in records:
        if rec.annotator_id is None:
            anonymous += 1
            continue
        a = rec.annotator_id
        comparisons[a] += len(rec.implied_pairs())
        rankings[a]  # every annotator gets an entry
        if rec.num_responses >= 3:
            rankings[a].add((rec.prompt, rec.responses, rec.ranking))
        else:
            binary_records[a] += 1
    annotators = sorted(comparisons)
    with_rankings = sum(1 for a in annotators if rankings[a])
    one_binary = sum(1 for a in annotators if not rankings[a] and binary_records[a] == 1)
    warnings = []
    if records and not annotators:
        warnings.append("no record carries an annotator_id, so votes cannot be grouped by annotator and "
                        "types cannot be identified")
    elif annotators and with_rankings == 0 and one_binary == len(annotators):
        warnings.append(
            f"every one of the {len(annotators)} annotators gave a single binary comparison: a mixture of annotator "
            "types is not identifiable from such data, however many annotators there are (Lemma 4.1 of "
            "Chidambaram et al.: a 50/50 mixture of two opposite types gives every pair probability 1/2, "
            "exactly as one indifferent type does); collect rankings of 3+ responses (even top-1 of 3) or "
            "several diverse comparisons per annotator")
    elif annotators and one_binary > len(annotators) / 2:
        warnings.append(
            f"{one_binary} of {len(annotators)} annotators gave a single binary comparison and nothing else: "
            "their types cannot be told apart (Lemma 4.1 of Chidambaram et al.); only the other annotators' "
            "votes identify the types")
    return IdentifiabilityReport(
        num_records=len(records), num_annotators=len(annotators), records_without_annotator=anonymous,
        comparisons_per_annotator=_spread([comparisons[a] for a in annotators]),
        distinct_rankings_per_annotator=_spread([len(rankings[a]) for a in annotators]),
        annotators_with_rankings_of_3plus=with_rankings,
        annotators_with_one_binary_comparison_only=one_binary, warnings=warnings)
