"""Initial responsibilities of EM-DPO and the split of each annotator's votes into halves.

* ``kmeans``: one-hot gamma from k-means on per-annotator feature vectors (the authors' choice,
  PAPERS.md 4.4); the first M-step then trains DPO on each cluster: the Cluster-DPO baseline.
* ``random``: one-hot gamma of a random partition of the annotators, with the votes of each annotator split into two
  halves (a seeded shuffle, alternating) so that the E-step of a round scores the half its M-step did
  not train on; scoring the training votes would freeze a random start (PAPERS.md 4.4).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pluralign.data.loaders import DataError
from pluralign.lab.plackett_luce import kmeans_labels


def read_features(path: str | Path) -> dict[str, np.ndarray]:
    """{annotator_id: feature vector} from JSONL/JSON rows ``{"annotator_id": ..., "features": [...]}``,
    a JSON object ``{annotator_id: [...]}``, or a CSV with an ``annotator_id`` column and numeric
    feature columns. Every vector must be finite and of one length."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"em.features = {str(path)!r}: no such file")
    rows: list[tuple[str, list]] = []
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if "annotator_id" not in (reader.fieldnames or []):
                raise DataError(f"{path}: needs an 'annotator_id' column; got {reader.fieldnames}", source=str(path))
            cols = [c for c in reader.fieldnames if c != "annotator_id"]
            for n, row in enumerate(reader, start=2):
                try:
                    rows.append((row["annotator_id"], [float(row[c]) for c in cols]))
                except (TypeError, ValueError):
                    raise DataError(f"{path} row {n}: feature columns {cols} must be numbers, got "
                                    f"{[row[c] for c in cols]}", source=str(path), row=n) from None
    else:
        text = path.read_text()
        try:
            data = json.loads(text)
            if isinstance(data, dict) and "annotator_id" in data:  # a one-row JSONL file
                data = [data]
            items = list(data.items()) if isinstance(data, dict) else [(r.get("annotator_id"), r.get("features"))
                                                                        for r in data]
        except json.JSONDecodeError:
            items = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path} row {n}: not JSON ({exc.msg})", source=str(path), row=n) from None
                    if not isinstance(r, dict):
                        raise DataError(f"{path} row {n}: expected an object with annotator_id and features",
                                        source=str(path), row=n)
                    items.append((r.get("annotator_id"), r.get("features")))
        except AttributeError:
            raise DataError(f"{path}: expected rows {{'annotator_id': ..., 'features': [...]}} or an object "
                            "{annotator_id: [...]}", source=str(path)) from None
        rows = list(items)
    out: dict[str, np.ndarray] = {}
    for n, (aid, vec) in enumerate(rows, start=1):
        if not isinstance(aid, str) or not isinstance(vec, (list, tuple)) or not vec:
            raise DataError(f"{path} entry {n}: expected a string annotator_id and a non-empty list 'features', "
                            f"got {aid!r}: {vec!r}", source=str(path), row=n, field="features")
        try:
            v = np.asarray(vec, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"{path} entry {n} ({aid!r}): features must be numbers, got {vec!r}",
                            source=str(path), row=n, field="features") from None
        if not np.all(np.isfinite(v)):
            raise DataError(f"{path} entry {n} ({aid!r}): features must be finite, got {vec!r}",
                            source=str(path), row=n, field="features")
        out[aid] = v
    lengths = {v.shape for v in out.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: feature vectors of different lengths {sorted(s[0] for s in lengths)}", source=str(path))
    if not out:
        raise DataError(f"{path}: no feature vectors", source=str(path))
    return out


def kmeans_gamma(annotators: list[str], features: dict[str, np.ndarray], n_types: int,
                 rng: np.random.Generator, source: str = "em.features") -> np.ndarray:
    """One-hot responsibilities [A, K] from k-means clusters of the annotators' feature vectors."""
    missing = [a for a in annotators if a not in features]
    if missing:
        raise DataError(f"{source}: no feature vector for {len(missing)} of {len(annotators)} annotators "
                        f"(first: {missing[:3]}); every annotator of the data needs one")
    points = np.stack([features[a] for a in annotators])
    labels = kmeans_labels(points, n_types, rng)
    return np.eye(n_types)[labels]


def random_gamma(n_annotators: int, n_types: int, rng: np.random.Generator) -> np.ndarray:
    """One-hot responsibilities of a uniformly random partition of the annotators. (A random hard
    split tilts each type's data further from the pooled data than Dirichlet(1) soft weights do,
    about 1.7x in standard deviation for two types, so the symmetry between types breaks sooner.)"""
    return np.eye(n_types)[rng.integers(n_types, size=n_annotators)]


def split_halves(annotator: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half (0 or 1) of every record: each annotator's records in a seeded random order, alternating
    from a random first half, so the halves of an annotator differ in size by at most one (a single
    vote lands in either half with probability 1/2)."""
    annotator = np.asarray(annotator)
    half = np.zeros(annotator.size, dtype=int)
    for a in np.unique(annotator):
        rows = np.flatnonzero(annotator == a)
        half[rng.permutation(rows)] = (np.arange(rows.size) + rng.integers(2)) % 2
    return half
