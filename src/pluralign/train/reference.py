"""Reference log-probs: precomputed once and cached on disk, or computed on the fly.

The cache file is keyed by a SHA-256 over the reference weights, the tokenizer, the tokenized data
(which already reflects the truncation settings) and the dtype, so a different model, tokenizer,
data set or truncation gets a different file and is never confused with this one. A file whose
stored key or content checksum does not match, or that cannot be read, is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pluralign.data.collate import Batch, Collator
from pluralign.data.tokenize import TokenizedDataset
from pluralign.logprobs import SequenceLogprobs

log = logging.getLogger(__name__)


def weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
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


def cache_key(model, tokenizer, data: TokenizedDataset, dtype: str) -> str:
    parts = [weights_fingerprint(model), tokenizer_fingerprint(tokenizer), data_fingerprint(data), dtype]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _checksum(logps: torch.Tensor, counts: torch.Tensor) -> str:
    return hashlib.sha256(logps.numpy().tobytes() + counts.numpy().tobytes()).hexdigest()


def load_cached(path: Path, key: str, num_examples: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached table if ``path`` holds a valid one for ``key``; None (with a warning) otherwise."""
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        logps, counts = tensors["logps"], tensors["counts"]
    except Exception as exc:  # unreadable or truncated file
        log.warning("reference cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if meta.get("key") != key or logps.shape[0] != num_examples or meta.get("checksum") != _checksum(logps, counts):
        log.warning("reference cache %s does not match this model/tokenizer/data or is corrupted; rebuilding it", path)
        return None
    return logps, counts


@torch.no_grad()
def compute_table(module: SequenceLogprobs, data: TokenizedDataset, collator: Collator, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts [N, K_max] of every example, in dataset order."""
    kmax = max(len(ex.response_ids) for ex in data.examples)
    logps = torch.zeros(len(data), kmax)
    counts = torch.zeros(len(data), kmax)
    was_training = module.training
    module.eval()
    order = sorted(range(len(data)), key=lambda i: data[i].num_tokens_shared)  # similar lengths together
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collator([data[i] for i in idx], idx).to(device)
        s, c = module(batch)
        logps[idx, : s.shape[1]] = s.float().cpu()
        counts[idx, : c.shape[1]] = c.float().cpu()
    module.train(was_training)
    return logps, counts


def precompute_reference(module, data, collator, batch_size, device, cache_path: Path, key: str, accelerator=None):
    """Load the cached table for ``key`` or compute it (on the main process) and save it atomically."""
    is_main = accelerator is None or accelerator.is_main_process
    cached = load_cached(cache_path, key, len(data)) if is_main else None
    built = False
    if is_main and cached is None:
        logps, counts = compute_table(module, data, collator, batch_size, device)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        meta = {"key": key, "checksum": _checksum(logps, counts), "num_examples": str(len(data))}
        save_file({"logps": logps.contiguous(), "counts": counts.contiguous()}, str(tmp), metadata=meta)
        tmp.replace(cache_path)
        built = True
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if cached is None:
        cached = load_cached(cache_path, key, len(data))
        if cached is None:
            raise RuntimeError(f"reference cache {cache_path} could not be read back after writing it")
    return cached[0], cached[1], built


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
