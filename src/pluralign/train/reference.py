"""Reference log-probs: precomputed once and cached on disk, or computed on the fly.

The cache file is keyed by a SHA-256 over the reference weights and config, the tokenizer, the
tokenized data (which already reflects the truncation settings), the weight dtype, the autocast mode
and the torch / transformers versions, so other inputs get another file and are never confused with
this one. The table is computed under the run's autocast, exactly as the live reference would be. A
file whose stored key or content checksum does not match, or that is truncated, is reported and
rebuilt; a cache path that is a directory, unreadable or unwritable (full disk) is a clear error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pluralign.data.collate import Batch, Collator
from pluralign.data.tokenize import TokenizedDataset
from pluralign.errors import PluralignError
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import load_model
from pluralign.objectives import REFERENCE_FREE
from pluralign.train.shard import shard_batches, sum_across

log = logging.getLogger(__name__)


def weights_fingerprint(model: torch.nn.Module, skip_adapters: bool = False) -> str:
    """SHA-256 over the weights; ``skip_adapters`` leaves out LoRA adapter tensors (``lora_`` in the
    name), on which the reference of a LoRA policy (adapters disabled) does not depend."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if skip_adapters and "lora_" in name:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "bos": getattr(tokenizer, "bos_token_id", None),
        "eos": tokenizer.eos_token_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(data: TokenizedDataset) -> str:
    h = hashlib.sha256()
    for ex in data.examples:
        h.update(repr((ex.prompt_ids, ex.response_ids)).encode())
    return h.hexdigest()


def cache_key(model, tokenizer, data: TokenizedDataset, dtype: str, mixed_precision: str = "no",
              skip_adapters: bool = False) -> str:
    """Everything the cached numbers depend on: weights (without LoRA adapters when the reference is
    the policy with adapters disabled), model config, tokenizer, tokenized data, weight dtype,
    autocast mode, and the torch / transformers versions (kernels change between them)."""
    import transformers

    config = getattr(model, "config", None)
    config_json = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    parts = [weights_fingerprint(model, skip_adapters), hashlib.sha256(config_json.encode()).hexdigest(), tokenizer_fingerprint(tokenizer),
             data_fingerprint(data), dtype, f"autocast={mixed_precision}", f"torch={torch.__version__}",
             f"transformers={transformers.__version__}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _checksum(logps: torch.Tensor, counts: torch.Tensor) -> str:
    return hashlib.sha256(logps.numpy().tobytes() + counts.numpy().tobytes()).hexdigest()


def _check_cache_path(path: Path) -> None:
    if path.is_dir():
        raise PluralignError(f"reference cache {path} is a directory; remove it or set reference.cache_dir to another folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise PluralignError(f"reference.cache_dir {path.parent} is a file, not a folder")
    if path.exists() and not os.access(path, os.R_OK):
        raise PluralignError(f"reference cache {path} is not readable (permissions); fix them, remove the file, "
                             "or set reference.cache_dir to another folder")


def load_cached(path: Path, key: str, num_examples: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached table if ``path`` holds a valid one for ``key``; None (with a warning) when it is
    missing, truncated, corrupted or for other inputs. A path that cannot be a cache is an error."""
    _check_cache_path(path)
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        logps, counts = tensors["logps"], tensors["counts"]
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # truncated or garbled file
        log.warning("reference cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if meta.get("key") != key or logps.shape[0] != num_examples or meta.get("checksum") != _checksum(logps, counts):
        log.warning("reference cache %s does not match this model/tokenizer/data or is corrupted; rebuilding it", path)
        return None
    return logps, counts


@torch.no_grad()
def compute_table(module: SequenceLogprobs, data: TokenizedDataset, collator: Collator, batch_size: int, device,
                  accelerator=None, plan: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts [N, K_max] of every example, in dataset order. With an
    ``accelerator``, computed under its autocast (as training computes the policy) and split across
    its processes, each computing a share of the batches; every process returns the whole table.

    ``plan``: batches of dataset indices to compute in, batch i on process ``i % world`` (training's
    own micro-batches, so that each example is computed in the batch, hence the shapes, it is
    trained in); examples it leaves out follow in batches of similar lengths."""
    kmax = max(len(ex.response_ids) for ex in data.examples)
    logps = torch.zeros(len(data), kmax)
    counts = torch.zeros(len(data), kmax)
    was_training = module.training
    module.eval()
    planned = {i for b in plan for i in b} if plan else set()
    order = sorted((i for i in range(len(data)) if i not in planned), key=lambda i: data[i].num_tokens_shared)
    batches = [list(b) for b in plan or []] + [order[start : start + batch_size]
                                               for start in range(0, len(order), batch_size)]
    autocast = accelerator.autocast if accelerator is not None else nullcontext
    for idx, keep in shard_batches(batches, accelerator):
        batch = collator([data[i] for i in idx], idx).to(device)
        with autocast():
            s, c = module(batch)
        if keep:
            logps[idx, : s.shape[1]] = s.float().cpu()
            counts[idx, : c.shape[1]] = c.float().cpu()
    module.train(was_training)
    return sum_across(accelerator, logps, counts)


def precompute_reference(module, data, collator, batch_size, device, cache_path: Path, key: str, accelerator=None,
                         plan: list[list[int]] | None = None):
    """(logps, counts, built): the cached table for ``key``, or the table computed (split across
    processes, in ``plan``'s batches: see :func:`compute_table`) and saved atomically by the main
    process."""
    cached = load_cached(cache_path, key, len(data))
    hit = torch.tensor([0.0 if cached is None else 1.0])
    (hit,) = sum_across(accelerator, hit)
    world = 1 if accelerator is None else accelerator.num_processes
    if cached is not None and float(hit) == world:
        return cached[0], cached[1], False
    logps, counts = compute_table(module, data, collator, batch_size, device, accelerator, plan)
    if accelerator is None or accelerator.is_main_process:
        _save_table(cache_path, key, logps, counts)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return logps, counts, True


def _save_table(path: Path, key: str, logps: torch.Tensor, counts: torch.Tensor) -> None:
    tmp = path.with_name(path.name + ".tmp")
    meta = {"key": key, "checksum": _checksum(logps, counts), "num_examples": str(logps.shape[0])}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"logps": logps.contiguous(), "counts": counts.contiguous()}, str(tmp), metadata=meta)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PluralignError(f"could not write the reference cache {path}: {exc.strerror or exc}; free space or "
                             "set reference.cache_dir to a writable folder (or reference.precompute=false)") from exc


def build_reference(cfg, accelerator, model, tokenizer, parts, collator, out: Path, precompute=precompute_reference,
                    plans=None):
    """One reference per dataset in ``parts`` (None entries stay None), or Nones for reference-free
    objectives. The reference is ``reference.name``, else a frozen copy of ``model`` as it is now,
    else (LoRA) ``model`` with adapters disabled. With ``reference.precompute`` the log-probs are
    computed once (cached on disk, split across processes) and no reference model is kept;
    ``plans[i]`` (optional) are the batches to compute part i in (see :func:`compute_table`)."""
    if hasattr(cfg, "objective") and cfg.objective.name in REFERENCE_FREE:  # rl recipes have no objective
        return [None for _ in parts]
    device = accelerator.device
    peft_policy = model if cfg.model.lora is not None else None
    if cfg.reference.name is not None:
        ref_model = load_model(cfg.reference.name, tokenizer, dtype=cfg.model.dtype,
                               attn_implementation=cfg.model.attn_implementation, seed=cfg.model.seed,
                               gguf_file=cfg.reference.gguf_file)
    elif peft_policy is None:
        ref_model = copy.deepcopy(model)
    else:
        ref_model = None  # the policy with adapters disabled is the reference
    if ref_model is not None:
        ref_model.requires_grad_(False).eval().to(device)
    module = SequenceLogprobs(ref_model if ref_model is not None else model, chunk_tokens=cfg.train.chunk_tokens,
                              prefix_attention=cfg.model.prefix_attention, compile=cfg.model.compile).to(device)
    live = LiveReference(module, peft_policy)
    if not cfg.reference.precompute:
        return [None if part is None else live for part in parts]
    cache_dir = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else out / "reference_cache"
    fingerprint_model = ref_model if ref_model is not None else model
    tables = []
    for part, plan in zip(parts, plans or [None] * len(parts)):
        if part is None:
            tables.append(None)
            continue
        key = cache_key(fingerprint_model, tokenizer, part, cfg.model.dtype, cfg.train.mixed_precision,
                        skip_adapters=ref_model is None)
        t0 = time.perf_counter()
        with peft_policy.disable_adapter() if peft_policy is not None else nullcontext():
            logps, counts, built = precompute(module, part, collator, cfg.train.batch_size, device,
                                              cache_dir / f"{key}.safetensors", key, accelerator, plan=plan)
        log.info("reference log-probs for %d examples %s in %.2f s on %d process(es) (%s)", len(part),
                 "computed" if built else "loaded from cache", time.perf_counter() - t0, accelerator.num_processes, key)
        tables.append(CachedReference(logps, counts))
    return tables


class CachedReference:
    """Reference log-probs looked up by dataset index (no model held)."""

    def __init__(self, logps: torch.Tensor, counts: torch.Tensor):
        self.logps, self.counts = logps, counts

    def __call__(self, batch: Batch):
        if batch.index is None:
            raise ValueError("a cached reference needs batches that carry dataset indices")
        idx = batch.index.cpu()
        k = batch.max_responses
        return self.logps[idx, :k].to(batch.input_ids.device), self.counts[idx, :k].to(batch.input_ids.device)


class LiveReference:
    """Reference log-probs computed per batch, from a frozen model or the policy with LoRA disabled."""

    def __init__(self, module: SequenceLogprobs, peft_policy=None):
        self.module, self.peft_policy = module, peft_policy

    @torch.no_grad()
    def __call__(self, batch: Batch):
        if self.peft_policy is not None:
            with self.peft_policy.disable_adapter():
                return self.module(batch)
        return self.module(batch)
