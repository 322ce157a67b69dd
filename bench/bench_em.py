"""EM-DPO cost against plain DPO on the same model and data: peak memory and one round's time.

    python bench/bench_em.py [--model tiny-small] [--records 256] [--out bench/results/em_tiny.json]

Contenders, each in its own subprocess (so its peak RSS is its own), run one after the other:

* ``dpo``: one epoch of PL-DPO with one LoRA adapter (``pluralign.train.offline.train`` on the
  preloaded model): tokenization, the reference log-probs (computed once), the training steps and
  the final checkpoint, i.e. what a DPO epoch costs.
* ``em_K`` for K = 1, 2, 4: ``pluralign.em.loop.run_em`` with K LoRA types and one round on the
  same records, without split halves (every M-step trains on all records): K M-steps (each a
  one-epoch offline run; the reference is computed by the first and read from the cache by the
  others) and the E-step (every type's log-probs of every record; the reference from the cache).

Reported: each contender's peak RSS, and RSS above its own baseline after imports (what the run
itself allocated); ``round_seconds`` of EM (the metrics row's ``seconds``: M-steps + E-step) against
K x the DPO epoch's wall time, and the same ratio in CPU time (``time.process_time`` of the
process; with ``--threads 1`` it is what the work costs, whatever else runs on the machine).
``--estep last_epoch`` runs the EM contenders with that approximation (see ``pluralign.em.loop``). The machine may be shared and loaded (the load average is recorded);
the ratios within one run are what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import peak_rss_mb, pin_threads  # noqa: E402

TARGETS = {"memory_k4_over_dpo": 1.25, "round_over_k_epochs": 1.2}


def _overrides(spec: dict, out: str) -> list[str]:
    return [f"model.name={spec['model']}", "model.lora={r: 8, alpha: 16}", "objective.name=plackett_luce",
            "objective.beta=0.5", "optim.lr=5e-3", "optim.scheduler=constant", f"train.batch_size={spec['batch_size']}",
            "train.epochs=1", "train.progress_bar=false", "train.report_to=[]", "data.max_length=64",
            "data.max_prompt_length=48", f"train.output_dir={out}", "data.layout=shared"]


def _records(spec: dict):
    from pluralign.worlds import default_world

    world = default_world(annotators_per_group=spec["records"])
    return world.sample_rankings(spec["records"], seed=0, n_per_annotator=spec["per_annotator"])


def worker(name: str, spec: dict, result_path: str) -> None:
    pin_threads(spec["threads"])
    import torch

    from pluralign.models import load_model, load_tokenizer

    baseline = peak_rss_mb()
    tok = load_tokenizer("byte")
    records = _records(spec)
    model = load_model(spec["model"], tok, seed=0)
    work = tempfile.mkdtemp(prefix=f"bench_em_{name}_")
    row: dict = {"contender": name, "baseline_rss_mb": baseline}
    if name == "dpo":
        from pluralign.train.config import load_config
        from pluralign.train.offline import train

        cfg = load_config(None, _overrides(spec, work))
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(cfg, model=model, tokenizer=tok, records=records)
        row.update(epoch_seconds=time.perf_counter() - t0, epoch_cpu_seconds=time.process_time() - c0, steps=result.steps)
    else:
        from pluralign.em.config import EMRunConfig
        from pluralign.em.loop import run_em
        from pluralign.train.config import load_config

        k = int(name.split("_")[1])
        cfg = load_config(None, _overrides(spec, work) + [f"em.n_types={k}", "em.rounds=1", "em.init=random",
                                                            "em.split_halves=false", f"em.estep={spec['estep']}"],
                          cls=EMRunConfig)
        t0 = time.perf_counter()
        result = run_em(cfg, model=model, tokenizer=tok, records=records)
        first = result.rounds[0]
        row.update(run_em_seconds=time.perf_counter() - t0, round_seconds=first["seconds"],
                   m_step_seconds=first["m_step_seconds"], e_step_seconds=first["e_step_seconds"],
                   round_cpu_seconds=first["cpu_seconds"], m_step_cpu_seconds=first["m_step_cpu_seconds"],
                   e_step_cpu_seconds=first["e_step_cpu_seconds"], n_types=k)
    row.update(peak_rss_mb=peak_rss_mb(), load_average=list(os.getloadavg()), threads=torch.get_num_threads())
    row["run_rss_mb"] = row["peak_rss_mb"] - baseline
    shutil.rmtree(work, ignore_errors=True)
    Path(result_path).write_text(json.dumps(row))


def summarize(rows: dict, spec: dict) -> dict:
    dpo = rows["dpo"]
    out = {"spec": spec, "contenders": rows, "ratios": {}, "targets": {}}
    r = out["ratios"]
    r["peak_rss em_4 / dpo"] = rows["em_4"]["peak_rss_mb"] / dpo["peak_rss_mb"]
    r["run_rss em_4 / dpo (above each process's post-import baseline)"] = rows["em_4"]["run_rss_mb"] / dpo["run_rss_mb"]
    for k in spec["ks"]:
        r[f"round / ({k} x dpo epoch), K={k}"] = rows[f"em_{k}"]["round_seconds"] / (k * dpo["epoch_seconds"])
        r[f"round / ({k} x dpo epoch), K={k}, CPU time"] = (rows[f"em_{k}"]["round_cpu_seconds"]
                                                           / (k * dpo["epoch_cpu_seconds"]))
    out["targets"]["peak memory K=4 <= 1.25 x dpo (peak RSS)"] = r["peak_rss em_4 / dpo"] <= TARGETS["memory_k4_over_dpo"]
    for k in spec["ks"]:
        key = f"round / ({k} x dpo epoch), K={k}"
        out["targets"][f"{key} <= 1.2"] = r[key] <= TARGETS["round_over_k_epochs"]
    out["machine"] = {"cpus": os.cpu_count(), "load_average_end": list(os.getloadavg()),
                      "note": "contenders ran one after another; a load average near or below the thread count "
                              "means a quiet machine, far above it a shared one, where load changes between "
                              "contenders move the ratios"}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-small")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--per-annotator", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--estep", default="exact", choices=["exact", "last_epoch"],
                        help="em.estep of the EM contenders")
    parser.add_argument("--out", default=str(HERE / "results" / "em_tiny.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(Path(args.spec).read_text()), args.result)
        return 0
    spec = {"model": args.model, "records": args.records, "per_annotator": args.per_annotator,
            "batch_size": args.batch_size, "threads": args.threads, "ks": [1, 2, 4], "estep": args.estep}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for name in ["dpo"] + [f"em_{k}" for k in spec["ks"]]:
            result = Path(tmp) / f"{name}.json"
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
            subprocess.run([sys.executable, __file__, "--worker", name, "--spec", str(spec_path), "--result", str(result)],
                           check=True, env=env)
            rows[name] = json.loads(result.read_text())
            print(name, json.dumps(rows[name]), flush=True)
    summary = summarize(rows, spec)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
