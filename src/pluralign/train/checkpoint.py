"""Checkpoints that survive a kill -9, hold the weights once, and resume only the run that wrote them.

Layout of ``<output_dir>/checkpoints/``::

    step-000050/  model/   save_pretrained (safetensors; loads with AutoModelForCausalLM, or PEFT for
                           LoRA adapters) and the tokenizer: the only copy of the weights
                  state/   accelerate's save_state without the model: optimizer, scheduler, RNG
                  trainer_state.json   step, epoch, number of processes, ...
    latest        text file naming the newest complete checkpoint (replaced atomically)

A save writes ``.tmp-step-N/``, fsyncs it, renames it to ``step-N/`` and only then points ``latest``
at it, so a kill at any moment leaves ``latest`` naming a complete checkpoint (or no ``latest``).
Pruning keeps the ``keep`` newest checkpoints up to the one just written and never touches it.
Under FSDP / DeepSpeed the sharded model state stays in ``state/`` too (accelerate needs it to
resume the shards), so there the weights are stored twice.

    ckpt = Checkpointer(accelerator, policy, out, keep=2, export=lambda m: m.model)
    state = ckpt.resume()            # trainer_state of the latest checkpoint, or None
    ckpt.save(step, {"step": step}, tokenizer)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from pluralign.errors import PluralignError

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "trainer_state.json").exists():
        raise PluralignError(f"{pointer} names {path.name}, which is incomplete; remove it to start over")
    return path


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


class Checkpointer:
    """Saves and restores one prepared model with its optimizer, scheduler and RNG state.

    ``export(unwrapped)`` maps the unwrapped prepared module to the ``PreTrainedModel`` (or PEFT
    model) whose ``save_pretrained`` folder is the checkpoint's ``model/``; ``prefix`` is that
    module's key prefix in the prepared module's state dict. Every process must call
    :meth:`save` and :meth:`resume` (they hold collectives).
    """

    def __init__(self, accelerator, model: torch.nn.Module, output_dir: str | Path, keep: int,
                 export: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m, prefix: str = ""):
        self.accelerator, self.model, self.keep = accelerator, model, keep
        self.root = checkpoint_root(output_dir)
        self.export, self.prefix = export, prefix
        self._load_from: Path | None = None
        # Weights once: accelerate's copy of the model is dropped from state/, and restored from model/.
        if accelerator.distributed_type not in SHARDED:
            accelerator.register_save_state_pre_hook(self._drop_model_weights)
            accelerator.register_load_state_pre_hook(self._load_model_weights)

    def _exported(self) -> torch.nn.Module:
        return self.export(self.accelerator.unwrap_model(self.model))

    def _is_ours(self, model) -> bool:
        # accelerate's list may hold the model wrapped (DDP) or not: compare the unwrapped modules.
        unwrap = self.accelerator.unwrap_model
        return unwrap(model) is unwrap(self.model)

    def _drop_model_weights(self, models, weights, output_dir):
        # ``models`` is the accelerator's own list: only the saved copy of the weights is removed.
        for i in reversed(range(len(models))):
            if self._is_ours(models[i]):
                weights.pop(i)

    def _load_model_weights(self, models, input_dir):
        for i in reversed(range(len(models))):
            if self._is_ours(models[i]):
                models.pop(i)
        load_exported_weights(self._exported(), self._load_from / "model")

    def save(self, step: int, trainer_state: dict, tokenizer=None) -> Path:
        acc = self.accelerator
        name = f"step-{step:06d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))
        state_dict = acc.get_state_dict(self.model)  # whole weights, gathered from shards where sharded
        if acc.is_main_process:
            cut = len(self.prefix)
            weights = {k[cut:]: v for k, v in state_dict.items() if k.startswith(self.prefix)}
            self._exported().save_pretrained(str(tmp / "model"), state_dict=weights, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / "model"))
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            _write_atomic(self.root / "latest", name)
            self._prune(step)
        acc.wait_for_everyone()
        return final

    def resume(self) -> dict | None:
        """Restore the latest checkpoint into the model, optimizer, registered objects and RNGs;
        return its trainer state, or None when there is none."""
        ckpt = latest_checkpoint(self.root.parent)
        if ckpt is None:
            return None
        self._load_from = ckpt
        self.accelerator.load_state(str(ckpt / "state"))
        return json.loads((ckpt / "trainer_state.json").read_text())

    def _prune(self, step: int) -> None:
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        older = sorted((p for p in self.root.glob("step-*") if p.is_dir() and _step_of(p) < step), key=_step_of)
        for old in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)


def load_exported_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a ``save_pretrained`` folder's weights into ``model`` in place (full model or PEFT adapters)."""
    adapter = folder / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(adapter)))
        if result.unexpected_keys:
            raise PluralignError(f"{adapter}: adapter weights {result.unexpected_keys[:3]} do not fit this model")
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained leaves out tied weights (lm_head = embeddings); anything else missing is an error.
    loaded = {t.data_ptr() for n, t in model.state_dict().items() if n in state}
    untied = [n for n in missing if model.state_dict()[n].data_ptr() not in loaded]
    if unexpected or untied:
        raise PluralignError(f"{folder}: checkpoint weights do not fit this model (missing {untied[:3]}, "
                             f"unexpected {unexpected[:3]})")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
