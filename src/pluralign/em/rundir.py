"""The EM run directory (``em_contract``): written after every round, read by ``pluralign aggregate``.

    RUN_DIR/config.json  tokenizer/  em_result.json  types/type_k/  posteriors.jsonl  metrics.jsonl
            base/ (when the base cannot be rebuilt from its name)  cluster_dpo/ (k-means init)
            em_state.json + rounds/round_r/ (resume: the last completed round's types and responsibilities)

Paths inside an ``em_result.json`` are relative to the folder holding it. A round is published in
three steps, each leaving a consistent directory if the process dies there: the round's types are
saved to ``rounds/round_r``; ``em_state.json`` is replaced atomically to point at them; the
published ``types/``, ``em_result.json`` and ``posteriors.jsonl`` are rewritten from that state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

STATE = "em_state.json"
EM_FILES = ("em_state.json", "rounds", "types", "em_result.json", "posteriors.jsonl", "cluster_dpo", "base",
            "tokenizer", "mstep", "reference_cache")


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def remove_em_files(out: Path) -> None:
    """What an EM run wrote besides the offline run files (``train.overwrite`` removes those)."""
    for name in EM_FILES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def read_state(out: Path) -> dict | None:
    path = Path(out) / STATE
    return json.loads(path.read_text()) if path.exists() else None


def read_metrics(out: Path, rounds: int) -> list[dict]:
    """The metrics rows of the first ``rounds`` rounds (a row of an interrupted round is dropped)."""
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("round", rounds) < rounds]


def write_metrics(out: Path, rows: list[dict]) -> None:
    tmp = Path(out) / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, Path(out) / "metrics.jsonl")


def save_model(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _posterior_rows(gamma, annotators, annotator) -> str:
    counts = np.bincount(annotator, minlength=len(annotators))
    return "".join(json.dumps({"annotator_id": a, "posterior": [float(p) for p in gamma[i]],
                               "type": int(np.argmax(gamma[i])), "n_records": int(counts[i])}) + "\n"
                   for i, a in enumerate(annotators))


def _em_result(n_types, type_weights, kind, base_info, types_prefix, beta, rounds) -> dict:
    return {"n_types": n_types, "type_weights": [float(w) for w in type_weights], "kind": kind, "base": base_info,
            "types": [f"{types_prefix}type_{k}" for k in range(n_types)], "beta": beta, "rounds": rounds,
            "posteriors": "posteriors.jsonl"}


def write_run(dest: Path, types, gamma, annotators, annotator, type_weights, base_info, beta, rounds,
              relative_base: str | None = None, run_dir: Path | None = None) -> None:
    """A loadable run folder (the ``cluster_dpo/`` layout): ``dest/type_k``, em_result.json,
    posteriors.jsonl, and the ``run_dir``'s config.json and tokenizer/ copied in, so that
    ``pluralign.mixture.load_em_run(dest)`` reads it like the run itself. ``relative_base``: where
    the saved base lies relative to ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:
        shutil.copy2(Path(run_dir) / "config.json", dest / "config.json")
        shutil.rmtree(dest / "tokenizer", ignore_errors=True)
        shutil.copytree(Path(run_dir) / "tokenizer", dest / "tokenizer")
    for k in range(types.n_types):
        types.save(k, dest / f"type_{k}")
    base = dict(base_info)
    if relative_base is not None and base["name"] == "base":
        base["name"] = f"{relative_base}/base"
    (dest / "posteriors.jsonl").write_text(_posterior_rows(gamma, annotators, annotator))
    _write_json(dest / "em_result.json", _em_result(types.n_types, type_weights, types.kind, base, "", beta, rounds))


def finish_round(out: Path, rnd: int, types, gamma, posterior, annotators, annotator, type_weights, base_info,
                 beta, row: dict, rows: list[dict]) -> None:
    """Save round ``rnd`` (types, responsibilities ``gamma`` for the next M-step, reported
    ``posterior``), point the state at it, then publish it."""
    out = Path(out)
    round_dir = out / "rounds" / f"round_{rnd}"
    shutil.rmtree(round_dir, ignore_errors=True)
    round_dir.mkdir(parents=True)
    for k in range(types.n_types):
        types.save(k, round_dir / f"type_{k}")
    write_metrics(out, rows + [row])
    state = {"rounds": rnd + 1, "types_dir": f"rounds/round_{rnd}", "kind": types.kind, "gamma": gamma.tolist(),
             "posterior": posterior.tolist(), "type_weights": [float(w) for w in type_weights],
             "annotators": annotators, "annotator_records": np.bincount(annotator, minlength=len(annotators)).tolist(),
             "base": base_info, "beta": beta}
    _write_json(out / STATE, state)
    for old in (out / "rounds").iterdir():
        if old.name != round_dir.name:
            shutil.rmtree(old)
    publish(out)


def publish(out: Path) -> None:
    """types/, em_result.json and posteriors.jsonl from the last completed round (idempotent)."""
    out = Path(out)
    state = read_state(out)
    if state is None:
        return
    tmp = out / "types.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / state["types_dir"], tmp)
    shutil.rmtree(out / "types", ignore_errors=True)
    tmp.rename(out / "types")
    gamma = np.asarray(state["posterior"])
    counts = np.repeat(np.arange(len(state["annotators"])), state["annotator_records"])
    (out / "posteriors.jsonl").write_text(_posterior_rows(gamma, state["annotators"], counts))
    k = gamma.shape[1]
    _write_json(out / "em_result.json", _em_result(k, state["type_weights"], state["kind"], state["base"], "types/",
                                                   state["beta"], state["rounds"]))
