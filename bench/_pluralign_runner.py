"""The pluralign contender: shared-prefix batches, reference log-probs precomputed once, AdamW.

Two implementations, chosen by ``RunSpec.pluralign_impl``:

* ``trainer`` -- the library's own trainer, ``pluralign.train.offline.train``, configured for this
  work (layout shared, reference precomputed and cached, constant learning rate, no evaluation,
  no progress bar, no intermediate checkpoints). Its ``order`` argument follows the
  shared batch plan (as TRL's sampler does), its
  ``precompute_reference`` is timed, and ``on_log`` (called at every step) marks step ends.
* ``components`` -- the same loop written from the library's parts (``Collator(layout="shared")``
  -> ``SequenceLogprobs`` -> ``compute_objective`` -> weighted mean -> backward -> clip -> AdamW),
  for a tree without the trainer.

Pairs train ``dpo``; rankings of 4 train ``plackett_luce`` on one row per prompt.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import (Baton, RunResult, RunSpec, autocast, fold_step_times, optimizer_step, pin_threads,
                     shared_layout_attention_pairs)
from _workloads import records_from_json

HUGE = 1 << 20  # texts are capped by the workload; nothing may be truncated again


def trainer_available() -> bool:
    try:
        from pluralign.train.offline import train  # noqa: F401
    except ImportError:
        return False
    return True


def run(spec: RunSpec, baton: Baton) -> RunResult:
    impl = spec.pluralign_impl
    if impl == "auto":
        impl = "trainer" if trainer_available() else "components"
    return _run_trainer(spec, baton) if impl == "trainer" else _run_components(spec, baton)


def _result(spec: RunSpec, impl: str) -> RunResult:
    import pluralign

    return RunResult(
        contender="pluralign",
        version=f"pluralign {getattr(pluralign, '__version__', 'dev')} ({impl})",
        workload=spec.workload["name"],
        comparisons_per_step=spec.workload["comparisons_per_record"] * len(spec.workload["plan"][0]),
        timed_steps=spec.timed_steps,
    )


def _objective(records) -> str:
    return "dpo" if all(r.is_pair for r in records) else "plackett_luce"


def _count_tokens(result: RunResult, spec: RunSpec, data, collate) -> None:
    """Non-padding and padded tokens of the timed batches, collated by ``collate`` exactly as training
    collates them."""
    for indices in spec.workload["plan"][spec.warmup_steps:]:
        batch = collate([data[i] for i in indices], indices)
        result.tokens_timed += batch.num_tokens
        result.logit_tokens_timed += batch.gather_target.numel()  # logits only where response tokens are predicted
        result.padded_tokens_timed += batch.input_ids.numel()
        result.attention_pairs_timed += shared_layout_attention_pairs(batch)


def _run_trainer(spec: RunSpec, baton: Baton) -> RunResult:
    pin_threads(spec.threads)
    import torch
    from safetensors.torch import load_file

    import pluralign.train.offline as offline
    from pluralign.data.tokenize import tokenize_records
    from pluralign.models import load_tokenizer
    from pluralign.train.config import RunConfig
    from pluralign.train.data import run_collator

    torch.manual_seed(spec.seed)
    result = _result(spec, "trainer: pluralign.train.offline.train")
    records = records_from_json(spec.workload["records"])
    plan = spec.workload["plan"]
    order = [i for batch in plan for i in batch]
    out = Path(tempfile.mkdtemp(prefix="pluralign-", dir=spec.work_dir))

    cfg = RunConfig()
    cfg.model.name, cfg.model.tokenizer = spec.model_dir, spec.tokenizer
    cfg.model.dtype, cfg.model.attn_implementation = "float32", "sdpa"
    cfg.data.max_length, cfg.data.max_prompt_length = HUGE, HUGE - 1
    cfg.data.layout, cfg.data.group_by_length = "shared", True
    if spec.pluralign_max_row_tokens is not None:
        cfg.data.max_row_tokens = spec.pluralign_max_row_tokens
    cfg.objective.name, cfg.objective.beta = _objective(records), spec.beta
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps = spec.learning_rate, 0.0, [0.9, 0.999], 1e-8
    cfg.optim.scheduler, cfg.optim.warmup_steps, cfg.optim.warmup_ratio = "constant", 0, 0.0
    cfg.optim.max_grad_norm = spec.max_grad_norm if spec.max_grad_norm > 0 else None
    cfg.reference.precompute, cfg.reference.cache_dir = True, str(out / "reference_cache")
    cfg.train.output_dir, cfg.train.batch_size, cfg.train.grad_accum = str(out), len(plan[0]), 1
    cfg.train.max_steps = spec.passes * len(plan)  # len(records) == len(plan) * batch: one pass = one epoch
    cfg.train.seed, cfg.train.log_every, cfg.train.eval_every, cfg.train.save_every = spec.seed, 1, None, None
    cfg.train.progress_bar, cfg.train.report_to = False, []
    cfg.train.mixed_precision = "bf16" if spec.precision == "bf16" else "no"
    result.notes.append(f"objective {cfg.objective.name}; layout shared, rows packed (data.max_row_tokens "
                        f"{cfg.data.max_row_tokens!r}); chunk_tokens {cfg.train.chunk_tokens}; "
                        f"optimizer torch.optim.AdamW (fused); mixed_precision {cfg.train.mixed_precision}")

    # Every epoch follows the shared plan (TRL gets the same order from its sampler).
    if len(order) != len(records) or sorted(order) != list(range(len(records))):
        raise RuntimeError("the plan must use every record exactly once per pass")

    precompute = offline.precompute_reference

    def timed_precompute(*args, **kwargs):
        start = time.perf_counter()
        try:
            return precompute(*args, **kwargs)
        finally:
            result.precompute_seconds += time.perf_counter() - start

    offline.precompute_reference = timed_precompute
    step_seconds: list[float] = []
    resumed = [0.0]

    def on_log(step, model):  # called before the first step (step 0) and after every step
        now = time.perf_counter()
        if step == 0:
            result.setup_seconds = baton.since_start()
        else:
            step_seconds.append(now - resumed[0])
        resumed[0] = baton.handoff()
        return {}

    trained = offline.train(cfg, records=records, on_log=on_log,
                            order=lambda data, global_batch, seed, group_by_length: list(order))
    fold_step_times(result, step_seconds, spec.warmup_steps, spec.timed_steps)
    result.losses = [row["loss"] for row in trained.history if "loss" in row]

    tokenizer = load_tokenizer(spec.tokenizer)
    data = tokenize_records(records, tokenizer, max_length=HUGE, max_prompt_length=HUGE - 1)
    _count_tokens(result, spec, data, run_collator(cfg.data, tokenizer.pad_token_id, "shared"))
    tables = sorted((out / "reference_cache").glob("*.safetensors"))
    if len(tables) != 1:
        raise RuntimeError(f"expected one reference cache file, found {[t.name for t in tables]}")
    result.ref_logps = load_file(str(tables[0]))["logps"].tolist()
    return result


def _run_components(spec: RunSpec, baton: Baton) -> RunResult:
    pin_threads(spec.threads)
    import torch

    from pluralign.data.collate import Collator
    from pluralign.data.tokenize import tokenize_records
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.models import load_model, load_tokenizer
    from pluralign.objectives import PreferenceLogps, compute_objective

    torch.manual_seed(spec.seed)
    result = _result(spec, "components: Collator + SequenceLogprobs + compute_objective")
    tokenizer = load_tokenizer(spec.tokenizer)
    model = load_model(spec.model_dir, tokenizer, dtype="float32", attn_implementation="sdpa")
    records = records_from_json(spec.workload["records"])
    plan = spec.workload["plan"]
    objective = _objective(records)
    data = tokenize_records(records, tokenizer, max_length=HUGE, max_prompt_length=HUGE - 1)
    if data.num_truncated or len(data) != len(records):
        raise RuntimeError(f"unexpected truncation in the pluralign column: {data.report()}")
    collate = Collator(tokenizer.pad_token_id, layout="shared")
    scorer = SequenceLogprobs(model)
    result.notes.append(f"objective {objective}; layout shared; chunk_tokens {scorer.chunk_tokens}")

    # Reference log-probs, once, in the training batches' order.
    start = time.perf_counter()
    kmax = max(r.num_responses for r in records)
    reference = torch.zeros(len(records), kmax)
    model.eval()
    with torch.no_grad(), autocast(spec.precision):
        for indices in plan:
            batch = collate([data[i] for i in indices], indices)
            reference[batch.index] = scorer(batch)[0]
    model.train()
    result.precompute_seconds = time.perf_counter() - start
    result.ref_logps = reference.tolist()

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=0.0)
    result.setup_seconds = baton.since_start()
    losses, step_seconds = [], []
    resumed = baton.handoff()
    for _ in range(spec.passes):
        for indices in plan:
            batch = collate([data[i] for i in indices], indices)
            with autocast(spec.precision):
                policy, counts = scorer(batch)
            inputs = PreferenceLogps(policy=policy, reference=reference[batch.index], num_tokens=counts,
                                     ranking=batch.ranking, num_ranked=batch.num_ranked,
                                     response_mask=batch.response_mask)
            per_example, _stats = compute_objective(objective, inputs, beta=spec.beta)
            loss = (per_example * batch.weights).sum() / len(indices)
            optimizer_step(model, optimizer, loss, spec.max_grad_norm)
            losses.append(loss.detach())
            step_seconds.append(time.perf_counter() - resumed)
            resumed = baton.handoff()
    fold_step_times(result, step_seconds, spec.warmup_steps, spec.timed_steps)
    result.losses = [float(x) for x in losses]
    _count_tokens(result, spec, data, collate)
    return result
