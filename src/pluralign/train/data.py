"""Data plumbing for the training loops: records from a file or a world, tokenized with the run's
tokenizer and reported; batch order; layout choice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pluralign.data.collate import Collator
from pluralign.data.loaders import DataError, load_preferences
from pluralign.data.records import PreferenceRecord
from pluralign.train.config import ConfigError
from pluralign.data.tokenize import TokenizedDataset, tokenize_records
from pluralign.train.setup import build_tokenizer

log = logging.getLogger(__name__)


class RunData(NamedTuple):
    """What a preference loop trains on: the run's tokenizer and the tokenized training and held-out
    examples (``eval_data`` is None without held-out records)."""

    tokenizer: Any
    data: TokenizedDataset
    eval_data: TokenizedDataset | None


def load_run_data(cfg, out: Path, is_main: bool, *, tokenizer=None, records=None, eval_records=None,
                  check: Callable[[list[PreferenceRecord], str], None] | None = None) -> RunData:
    """The opening every preference loop shares (offline training, reward models).

    ``tokenizer`` or the configured one; ``records``/``eval_records`` or those :func:`load_records`
    reads; ``check(records, what)`` (``what``: "the training data" or "the evaluation data") runs on
    them before anything is tokenized; both parts are tokenized to ``data.max_length`` and
    ``data.max_prompt_length``. The load and tokenization reports are written to
    ``out/data_report.txt`` by the main process (``is_main``).
    """
    tokenizer, records, eval_records, reports = load_run_records(cfg, tokenizer, records, eval_records)
    if check is not None:
        check(records, "the training data")
        if eval_records:
            check(eval_records, "the evaluation data")
    data, eval_data = (tokenize_records(part, tokenizer, max_length=cfg.data.max_length,
                                        max_prompt_length=cfg.data.max_prompt_length) if part else None
                       for part in (records, eval_records))
    reports += [f"{name}: {part.report()}" for name, part in (("train", data), ("eval", eval_data)) if part is not None]
    log.info("train data: %s", data.report())
    if is_main:
        (out / "data_report.txt").write_text("\n\n".join(reports) + "\n")
    return RunData(tokenizer, data, eval_data)


def load_run_records(cfg, tokenizer=None, records=None, eval_records=None):
    """(tokenizer, records, eval records, report sections): ``tokenizer`` or the configured one, and
    ``records``/``eval_records`` as given (no report sections) or read by :func:`load_records`."""
    tokenizer = tokenizer or build_tokenizer(cfg.model)
    reports: list[str] = []
    if records is None:
        records, eval_records = load_records(cfg, tokenizer, reports)
    return tokenizer, records, eval_records, reports


def load_records(cfg, tokenizer, reports: list[str] | None = None):
    """(train records, eval records or None) from ``data.path`` or ``data.world``. Load reports
    (counts of loaded and skipped rows, the first problems) are logged and appended to ``reports``."""
    reports = reports if reports is not None else []
    d = cfg.data
    if (d.path is None) == (d.world is None):
        raise ConfigError("set exactly one of data.path and data.world")
    if d.path is not None:
        result = load_preferences(d.path, tokenizer=tokenizer, on_error=d.on_error, max_records=d.max_records, ties=d.ties,
                                  chat_template=d.chat_template)
        log.info("%s", result.report.summary())
        reports.append(result.report.summary())
        records = result.records
    else:
        records = world_records(d.world)
        reports.append(f"world {d.world.name!r}: {len(records)} {d.world.kind} records (seed {d.world.seed})")
    eval_records = None
    if d.eval_path is not None:
        ev = load_preferences(d.eval_path, tokenizer=tokenizer, on_error=d.on_error, ties=d.ties,
                              chat_template=d.chat_template)
        log.info("eval: %s", ev.report.summary())
        reports.append("eval data\n" + ev.report.summary())
        eval_records = ev.records
    elif d.eval_fraction > 0:
        n_eval = max(1, int(round(d.eval_fraction * len(records))))
        perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
        eval_records = [records[i] for i in perm[:n_eval]]
        records = [records[i] for i in sorted(perm[n_eval:])]
    if not records:
        raise DataError("no training records left after loading (see the skipped counts above)")
    return records, eval_records


def world_records(wcfg):
    from pluralign import worlds

    makers = {"default": worlds.default_world, "tiny": worlds.tiny_world}
    if wcfg.name not in makers:
        raise ConfigError(f"data.world.name = {wcfg.name!r}; expected one of {sorted(makers)}")
    world = makers[wcfg.name]()
    try:
        if wcfg.kind == "pairs":
            return world.sample_pairs(wcfg.num_records, seed=wcfg.seed, n_per_annotator=wcfg.n_per_annotator)
        return world.sample_rankings(wcfg.num_records, seed=wcfg.seed, k=wcfg.top_k,
                                     n_per_annotator=wcfg.n_per_annotator, n_shown=wcfg.n_shown)
    except ValueError as exc:  # counts that do not fit the world (annotator pool, candidate set)
        raise ConfigError(f"data.world ({wcfg.name!r}): {exc}") from None


def batch_order(data: TokenizedDataset, global_batch: int, seed: int, group_by_length: bool) -> list[int]:
    """A permutation of example indices for one epoch, deterministic in ``seed``.

    With ``group_by_length``, each run of 50 global batches is sorted by length before being cut into
    batches (less padding), and the batches are then shuffled, as TRL/HF ``group_by_length`` does.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g).tolist()
    if not group_by_length:
        return perm
    mega = global_batch * 50
    batches = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start : start + mega], key=lambda i: -data[i].num_tokens_shared)
        batches.extend(chunk[j : j + global_batch] for j in range(0, len(chunk), global_batch))
    full = [b for b in batches if len(b) == global_batch]
    rest = [i for b in batches if len(b) != global_batch for i in b]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
    return [i for b in shuffled for i in b] + rest


def micro_batches(epoch_order: list[int], in_epoch: int, batch_size: int, grad_accum: int, world: int,
                  rank: int) -> list[list[int]]:
    """The ``grad_accum`` micro-batches process ``rank`` trains on at step ``in_epoch`` of an epoch:
    global batch ``in_epoch`` of ``epoch_order``, split micro-batch-major across processes."""
    base = in_epoch * batch_size * grad_accum * world
    return [epoch_order[base + (m * world + rank) * batch_size:][:batch_size] for m in range(grad_accum)]


def epoch_plan(epoch_order: list[int], steps: int, batch_size: int, grad_accum: int, world: int) -> list[list[int]]:
    """Every micro-batch of an epoch's first ``steps`` steps, ordered so that batch i belongs to
    process ``i % world`` (the split :func:`pluralign.train.shard.shard_batches` makes)."""
    plan = []
    for step in range(steps):
        per_rank = [micro_batches(epoch_order, step, batch_size, grad_accum, world, r) for r in range(world)]
        plan += [per_rank[r][m] for m in range(grad_accum) for r in range(world)]
    return plan


def run_collator(dcfg, pad_id: int, layout: str) -> Collator:
    """The collator a loop trains with: ``layout`` ("shared" or "plain"); shared rows are packed up to
    ``data.max_row_tokens`` tokens ("auto": rows no longer than the batch's longest example; null:
    one prompt per row)."""
    budget = "longest" if dcfg.max_row_tokens == "auto" else dcfg.max_row_tokens
    return Collator(pad_id, layout, budget if layout == "shared" else None)


@torch.no_grad()
def choose_layout(requested: str, module, data: TokenizedDataset, pad_id: int, batch_size: int, device,
                  tol: float | None = None, shared: Collator | None = None) -> str:
    """``shared`` or ``plain``. For ``auto``, check once that shared-prefix log-probs equal the plain
    ones on the longest examples (where sliding windows, position limits and masks go wrong first),
    through every attention path the shared layout may take in training (the kernel and/or the
    dense mask), collated by ``shared`` (the training collator, so packed rows are what is checked;
    default: one prompt per row); fall back to plain when they differ or when the model rejects
    the shared inputs.
    ``tol`` is relative to the largest log-prob (default: 1e-4 for fp32 weights, 1e-2 for 16-bit).
    The choice is logged."""
    if requested != "auto":
        return requested
    longest = sorted(range(len(data)), key=lambda i: -data[i].num_tokens_shared)[: max(2, batch_size)]
    sample = [data[i] for i in sorted(longest)]
    if tol is None:
        tol = 1e-4 if next(module.parameters()).dtype == torch.float32 else 1e-2
    was = module.training
    module.eval()
    try:
        plain = module(Collator(pad_id, "plain")(sample).to(device))[0]
        shared_batch = (shared or Collator(pad_id, "shared"))(sample).to(device)
        diffs = {path: float((module(shared_batch, attention=path)[0] - plain).abs().max())
                 for path in module.shared_attention_paths()}
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:  # a model that rejects 4-D masks or position ids
        log.warning("shared-prefix layout unavailable (%s: %s); using the plain layout", type(exc).__name__, exc)
        return "plain"
    finally:
        module.train(was)
    scale = float(plain.abs().max()) + 1.0
    checked = ", ".join(f"{path} {diff:.1e}" for path, diff in diffs.items())
    if max(diffs.values()) > tol * scale:
        log.warning("shared-prefix log-probs differ from plain (max |diff|: %s); using the plain layout", checked)
        return "plain"
    log.info("layout: shared prefix, attention: %s (checked against plain on the %d longest examples: max |diff| %s)",
             module.attention_path, len(sample), checked)
    return "shared"
