"""EM-DPO on causal LMs (Chidambaram et al. 2510.15716; PAPERS.md section 4.4).

    result = run_em(load_config("recipes/em_tiny.yaml", cls=EMRunConfig))

A round is an M-step for every type, then an E-step:

* M-step (type k): one run of the offline loop (:func:`pluralign.train.offline.train`) on the
  training records with per-example weight ``gamma[annotator, k] * record weight``: DPO or PL-DPO
  weighted by the responsibilities (the loop does not renormalise weights). With LoRA types the
  run trains the active adapter ``type_k`` of the shared model with its own optimizer; the
  reference is the base with adapters disabled (its log-probs cached once in
  ``RUN_DIR/reference_cache`` and reused by every M-step). By default each type restarts from the
  SFT model every round (the authors' choice); ``em.warm_start`` continues from the last round.
* E-step: each type's summed log-probs of every training record, the objective's per-record loss
  read as minus the log-likelihood, and the log-space posterior of :mod:`pluralign.em.estep`.
  Types are scored one adapter at a time (a peft mixed-adapter batch would do the same work), in
  inference mode, ``em.score_batch_size`` records per forward. With K = 1 the posterior is 1 by
  definition and the scores only feed the reported log-likelihood.
  ``em.estep = "last_epoch"`` (an approximation) skips that forward: type k's log-likelihood of a
  record is minus the loss its M-step computed for it in its last epoch, i.e. under the policy of
  the step that trained on it, before that step's update, not under the final policy; records the
  last epoch did not reach (the remainder of an epoch) and types whose M-step was skipped are scored
  exactly. It needs every M-step to see every record (no split halves).

After every round the run directory of ``em_contract`` is brought up to date and the round's
state is written atomically, so ``train.resume`` continues after the last completed round and
gives what an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pluralign.data.identifiability import identifiability
from pluralign.data.loaders import DataError
from pluralign.data.tokenize import TokenizedDataset, tokenize_records
from pluralign.em import rundir
from pluralign.em.config import EMRunConfig, check_em_config
from pluralign.em.estep import example_tensors, floor_weights, posterior, record_scores
from pluralign.em.init import kmeans_gamma, random_gamma, read_features, split_halves
from pluralign.em.types import FullTypes, LoraTypes, evaluating
from pluralign.lab.identify import adjusted_rand_index
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import TINY_MODELS, load_model
from pluralign.train.checks import check_objective_fits_data
from pluralign.train.config import ConfigError, RunConfig
from pluralign.train.data import load_run_records, run_collator
from pluralign.train.offline import train
from pluralign.train.reference import cache_key, compute_table, precompute_reference
from pluralign.train.wiring import start_run

log = logging.getLogger(__name__)


@dataclass
class EMResult:
    output_dir: Path
    type_weights: np.ndarray  # [K]
    gamma: np.ndarray  # [A, K] posteriors over types of the annotators
    annotators: list[str]
    rounds: list[dict] = field(default_factory=list)  # the metrics.jsonl rows
    types: object = None  # LoraTypes | FullTypes
    tokenizer: object = None


def _usable(records, cfg, tokenizer):
    """(kept records, their tokenized dataset, the data report line): the records tokenization keeps,
    so that the E-step's examples and the M-steps' records correspond one to one. The report is that
    of the whole set, so every dropped record is counted under its reason, as in offline training."""
    kw = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    data = tokenize_records(records, tokenizer, **kw)
    if data.num_skipped == 0:
        return records, data, data.report()

    def kept(r):  # one record alone raises when tokenization drops it (its weight set to 1: weight 0 is no drop)
        try:
            return bool(tokenize_records([dataclasses.replace(r, weight=1.0)], tokenizer, **kw).examples)
        except DataError:
            return False

    keep = [r for r in records if kept(r)]
    log.warning("EM: %d of %d records dropped in tokenization (%s)", len(records) - len(keep), len(records),
                data.report())
    report = (f"{data.report()}; EM runs on the {len(keep)} kept records of {len(records)} "
              f"({len(records) - len(keep)} dropped: {'; '.join(data.problems)})")
    return keep, tokenize_records(keep, tokenizer, **kw), report


def _annotator_index(records, what: str) -> tuple[list[str], np.ndarray]:
    missing = [i for i, r in enumerate(records) if r.annotator_id is None]
    if missing:
        raise DataError(f"EM-DPO groups votes by annotator: {len(missing)} of {len(records)} records of {what} have no "
                        f"annotator_id (first: record {missing[0]}); give every record one", field="annotator_id")
    annotators = sorted({r.annotator_id for r in records})
    where = {a: i for i, a in enumerate(annotators)}
    return annotators, np.array([where[r.annotator_id] for r in records])


def true_groups(cfg: EMRunConfig, annotators: list[str]) -> list[str] | None:
    """The known group of every annotator: ``em.true_groups`` (JSON {annotator_id: group}), else the
    GROUP of ids "GROUP/aN" (worlds) when every id has one; None when unknown."""
    if cfg.em.true_groups is not None:
        path = Path(cfg.em.true_groups)
        try:
            mapping = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"em.true_groups = {str(path)!r}: cannot read a JSON object ({exc})") from None
        missing = [a for a in annotators if a not in mapping] if isinstance(mapping, dict) else annotators
        if missing:
            raise DataError(f"em.true_groups = {str(path)!r}: expected a JSON object giving every annotator a group; "
                            f"{len(missing)} annotators have none (first: {missing[:3]})")
        return [str(mapping[a]) for a in annotators]
    if all("/" in a for a in annotators):
        return [a.split("/", 1)[0] for a in annotators]
    return None


def _sub_config(cfg: EMRunConfig, out: Path, k: int, layout: str | None = None) -> RunConfig:
    """The offline run of type k's M-step: the recipe's sections, in ``RUN_DIR/mstep/type_k``;
    ``layout``: the batch layout an earlier M-step chose (``data.layout=auto`` checks it once per run)."""
    sub = RunConfig(**{f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(RunConfig)})
    if layout is not None:
        sub.data.layout = layout
    sub.train.output_dir = str(out / "mstep" / f"type_{k}")
    sub.train.resume, sub.train.overwrite = False, True
    sub.train.keep_checkpoints = 1
    sub.train.eval_every = None
    sub.data.eval_fraction, sub.data.eval_path = 0.0, None
    sub.reference.cache_dir = str(out / "reference_cache")
    sub.reference.precompute = True
    if cfg.em.kind == "full":
        sub.reference.name, sub.reference.gguf_file = str(out / "base"), None
    return sub


def m_step(cfg: EMRunConfig, out: Path, k: int, model, tokenizer, records, gamma_k: np.ndarray,
           annotator: np.ndarray, on_losses=None, layout: str | None = None):
    """Type k's responsibility-weighted DPO / PL-DPO: the offline loop on ``records`` with example
    weights ``gamma_k[annotator] * weight``. Returns the run's TrainResult (``on_losses`` as in
    :func:`pluralign.train.offline.train`; ``layout`` as in :func:`_sub_config`)."""
    weighted = [dataclasses.replace(r, weight=r.weight * float(gamma_k[a])) for r, a in zip(records, annotator)]
    return train(_sub_config(cfg, out, k, layout), model=model, tokenizer=tokenizer, records=weighted,
                 on_losses=on_losses)


class LastEpochLosses:
    """Per-record objective losses [N] of the latest epoch an M-step ran (NaN where that epoch did
    not reach a record): the ``on_losses`` hook of ``em.estep = "last_epoch"``."""

    def __init__(self, n: int):
        self.epoch, self.losses = -1, np.full(n, np.nan)

    def __call__(self, epoch: int, indices, losses) -> None:
        if epoch > self.epoch:
            self.epoch, self.losses = epoch, np.full(len(self.losses), np.nan)
        self.losses[np.asarray(indices)] = losses.double().cpu().numpy()


class _Scorer:
    """Summed log-probs of a dataset under each type and under the reference: forwards in inference
    mode (no autograd records), ``em.score_batch_size`` examples at a time."""

    def __init__(self, cfg, types, pad_id):
        self.cfg, self.types, self.pad_id = cfg, types, pad_id
        self.batch_size = cfg.em.score_batch_size or 4 * cfg.train.batch_size
        self.modules: dict[int, SequenceLogprobs] = {}

    def _module(self, model):
        if id(model) not in self.modules:
            self.modules[id(model)] = SequenceLogprobs(model, chunk_tokens=self.cfg.train.chunk_tokens,
                                                       prefix_attention=self.cfg.model.prefix_attention,
                                                       compile=self.cfg.model.compile)
        return self.modules[id(model)]

    def table(self, model, data, layout, context=None):
        module = self._module(model)
        device = next(model.parameters()).device
        with evaluating(model), torch.inference_mode(), (context if context is not None else nullcontext()):
            logps, counts = compute_table(module, data, run_collator(self.cfg.data, self.pad_id, layout),
                                          self.batch_size, device)
        return logps.clone(), counts.clone()  # normal tensors again, usable outside inference mode

    def reference(self, data, layout, tokenizer, cache_dir: Path):
        """The reference table, through the M-steps' on-disk cache (same key, so a data set an
        M-step has seen is not computed again)."""
        model, context = self.types.reference()
        lora = self.types.kind == "lora"
        key = cache_key(model, tokenizer, data, self.cfg.model.dtype, "no", skip_adapters=lora)
        module = self._module(model)
        collator = run_collator(self.cfg.data, self.pad_id, layout)
        with evaluating(model), context:
            logps, counts, _ = precompute_reference(module, data, collator, self.cfg.train.batch_size,
                                                    next(model.parameters()).device,
                                                    cache_dir / f"{key}.safetensors", key)
        return logps, counts

    def policy(self, k, data, layout):
        return self.table(self.types.policy(k), data, layout)[0]


def _scores(cfg, scorer, data, fields, ref, k, layout):
    return record_scores(cfg.objective.name, cfg.objective.beta, cfg.objective.args, scorer.policy(k, data, layout),
                         ref[0], ref[1], fields)


def _log_likelihood(cfg, scorer, data, fields, ref, k, layout, last: LastEpochLosses | None) -> np.ndarray:
    """Type k's log-likelihood [N] of every record: scored exactly, or (``last``) minus its M-step's
    last-epoch losses, scoring exactly only the records that epoch did not reach."""
    if last is None or last.epoch < 0:
        return _scores(cfg, scorer, data, fields, ref, k, layout)[0]
    ll = -last.losses
    missing = np.flatnonzero(np.isnan(ll))
    if missing.size:
        rows = torch.as_tensor(missing)
        policy = scorer.policy(k, TokenizedDataset(examples=[data[i] for i in missing]), layout)
        policy = torch.nn.functional.pad(policy, (0, ref[0].shape[1] - policy.shape[1]))  # the table's width
        ll[missing] = record_scores(cfg.objective.name, cfg.objective.beta, cfg.objective.args, policy, ref[0][rows],
                                    ref[1][rows], {name: value[rows] for name, value in fields.items()})[0]
    return ll


def run_em(cfg: EMRunConfig, *, model=None, tokenizer=None, records=None, eval_records=None,
           features: dict | None = None) -> EMResult:
    """EM-DPO as configured; writes the run directory (see ``em_contract``) and returns the result.

    ``model`` (the SFT/base causal LM), ``tokenizer``, ``records`` / ``eval_records`` and
    ``features`` ({annotator_id: vector}, for k-means) replace what the config would load.
    """
    check_em_config(cfg)
    em = cfg.em
    out = Path(cfg.train.output_dir)
    if cfg.train.overwrite:
        rundir.remove_em_files(out)
    resume_state = rundir.read_state(out) if cfg.train.resume else None
    config, accelerator, out = start_run(cfg)
    if accelerator.num_processes > 1:
        raise ConfigError("pluralign em runs in one process (each M-step is one offline run); launch it without "
                          "torchrun / accelerate launch")
    tokenizer, records, eval_records, reports = load_run_records(cfg, tokenizer, records, eval_records)
    check_objective_fits_data(cfg.objective.name, cfg.objective.beta, cfg.objective.args, records)
    records, data, train_report = _usable(records, cfg, tokenizer)
    annotators, annotator = _annotator_index(records, "the training data")
    ident = identifiability(records)
    for w in ident.warnings:
        log.warning("identifiability: %s", w)
    reports += [f"train: {train_report}", "\n".join(ident.summary_lines())]
    eval_data = None
    if eval_records:
        eval_records, eval_data, eval_report = _usable(eval_records, cfg, tokenizer)
        where = {a: i for i, a in enumerate(annotators)}
        eval_annotator = np.array([where.get(r.annotator_id, -1) for r in eval_records])
        reports.append(f"eval: {eval_report}; {int((eval_annotator < 0).sum())} records by annotators "
                       "unseen in training (weighted by the type weights)")
    (out / "data_report.txt").write_text("\n\n".join(reports) + "\n")
    truth = true_groups(cfg, annotators)

    rng = np.random.default_rng(em.seed)
    init = em.resolved_init
    if init == "kmeans":
        feats = features if features is not None else read_features(em.features)
        gamma = kmeans_gamma(annotators, feats, em.n_types, rng)
    else:
        gamma = random_gamma(len(annotators), em.n_types, rng)
    halves = split_halves(annotator, rng) if em.resolved_split_halves else None
    initial_labels = gamma.argmax(1)

    # The base (SFT) model: saved when it cannot be rebuilt from the model section alone.
    base = model if model is not None else load_model(cfg.model.name, tokenizer, dtype=cfg.model.dtype,
                                                      attn_implementation=cfg.model.attn_implementation,
                                                      seed=cfg.model.seed, gguf_file=cfg.model.gguf_file)
    save_base = model is not None or cfg.model.name in TINY_MODELS or em.kind == "full"
    if save_base and not (out / "base" / "config.json").exists():
        rundir.save_model(base, out / "base")
    tokenizer.save_pretrained(str(out / "tokenizer"))
    types = (LoraTypes(base, cfg.model.lora, em.n_types, seed=cfg.model.seed) if em.kind == "lora"
             else FullTypes(base, em.n_types))
    base_info = {"name": "base" if save_base else cfg.model.name, "gguf_file": None if save_base else cfg.model.gguf_file,
                 "dtype": cfg.model.dtype}

    start, rows = 0, []
    if resume_state is not None:
        start, gamma = resume_state["rounds"], np.asarray(resume_state["gamma"], dtype=float)
        if resume_state["annotators"] != annotators:
            raise ConfigError(f"train.resume: {out} was run on other annotators; resume with the same data")
        for k in range(em.n_types):
            types.load(k, out / resume_state["types_dir"] / f"type_{k}")
        rows = rundir.read_metrics(out, start)
        log.info("EM: resumed after round %d of %d", start, em.rounds)
    rundir.write_metrics(out, rows)

    fields = example_tensors(data)
    eval_fields = example_tensors(eval_data) if eval_data is not None else None
    scorer = _Scorer(cfg, types, tokenizer.pad_token_id)
    refs: dict[str, tuple] = {}
    eta = floor_weights(gamma.mean(0), em.eta_floor)
    layout = None if cfg.data.layout == "auto" else cfg.data.layout
    for rnd in range(start, em.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        m_rows = np.flatnonzero(halves != rnd % 2) if halves is not None else np.arange(len(records))
        eta = floor_weights(gamma.mean(0), em.eta_floor)  # the prior of this round's E-step
        m_loss = []
        last = [None] * em.n_types
        for k in range(em.n_types):
            if not em.warm_start:
                types.reset(k)
            weights = gamma[annotator[m_rows], k]
            if not np.any(weights * np.array([records[i].weight for i in m_rows]) > 0):
                log.warning("EM round %d: type %d has no responsibility on any M-step record; its policy is kept", rnd, k)
                m_loss.append(None)
                continue
            last[k] = LastEpochLosses(len(m_rows)) if em.estep == "last_epoch" else None
            result = m_step(cfg, out, k, types.policy(k), tokenizer, [records[i] for i in m_rows], gamma[:, k],
                            annotator[m_rows], on_losses=last[k], layout=layout)
            layout = result.layout  # checked by the first M-step of the run (data.layout=auto), then reused
            m_loss.append(result.history[-1].get("loss") if result.history else None)
        t_m, c_m = time.perf_counter() - t0, time.process_time() - c0
        if rnd == 0 and init == "kmeans" and em.save_cluster_dpo:
            rundir.write_run(out / "cluster_dpo", types, gamma, annotators, annotator, eta, base_info,
                             cfg.objective.beta, 0, relative_base="..", run_dir=out)
        # E-step: every training record is scored; with split halves the posterior that updates
        # gamma uses the other half of the votes, the reported one uses them all.
        t1, c1 = time.perf_counter(), time.process_time()
        if "train" not in refs:
            refs["train"] = scorer.reference(data, layout, tokenizer, out / "reference_cache")
        loglik = np.zeros((len(records), em.n_types))
        for k in range(em.n_types):  # last_epoch: no split halves, so m_rows is every record, in order
            loglik[:, k] = _log_likelihood(cfg, scorer, data, fields, refs["train"], k, layout, last[k])
        weights = np.array([r.weight for r in records])
        full_gamma, total_ll = posterior(loglik, annotator, len(annotators), eta, weights)
        if halves is not None:
            e_weights = np.where(halves == rnd % 2, weights, 0.0)
            gamma, e_ll = posterior(loglik, annotator, len(annotators), eta, e_weights)
        else:
            gamma, e_ll = full_gamma, total_ll
        t_e, c_e = time.perf_counter() - t1, time.process_time() - c1
        new_eta = floor_weights(full_gamma.mean(0), em.eta_floor)
        row = {"round": rnd, "type_weights": new_eta.tolist(), "log_likelihood": total_ll,
               "log_likelihood_per_record": total_ll / max(1.0, weights.sum()), "e_step_log_likelihood": e_ll,
               "m_step_loss": m_loss, "type_sizes": np.bincount(full_gamma.argmax(1), minlength=em.n_types).tolist(),
               "m_step_seconds": t_m, "e_step_seconds": t_e, "m_step_cpu_seconds": c_m, "e_step_cpu_seconds": c_e,
               "e_step_scores": em.estep}
        if truth is not None:
            row["ari"] = adjusted_rand_index(truth, full_gamma.argmax(1))
            row["ari_initial"] = adjusted_rand_index(truth, initial_labels)
        if eval_data is not None:
            if "eval" not in refs:
                refs["eval"] = scorer.reference(eval_data, layout, tokenizer, out / "reference_cache")
            resp = np.where(eval_annotator[:, None] >= 0, full_gamma[np.maximum(eval_annotator, 0)], new_eta[None])
            ew = np.array([r.weight for r in eval_records])
            for k in range(em.n_types):
                _, stats = _scores(cfg, scorer, eval_data, eval_fields, refs["eval"], k, layout)
                w = resp[:, k] * ew
                for name in ("rewards/accuracies", "rewards/ranking_accuracy", "rewards/margins"):
                    row[f"eval_type_{k}/{name}"] = float((w * stats[name]).sum() / max(w.sum(), 1e-12))
        row["seconds"], row["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
        rundir.finish_round(out, rnd, types, gamma, full_gamma, annotators, annotator, new_eta, base_info,
                            cfg.objective.beta, row, rows)
        rows.append(row)
        log.info("EM round %d: type weights %s, log-likelihood %.4f%s (%.1f s)", rnd,
                 np.round(new_eta, 3).tolist(), total_ll, f", ARI {row['ari']:.3f}" if "ari" in row else "",
                 row["seconds"])
    rundir.publish(out)
    final = rundir.read_state(out)
    return EMResult(out, np.asarray(final["type_weights"]), np.asarray(final["posterior"]), annotators, rows, types,
                    tokenizer)
