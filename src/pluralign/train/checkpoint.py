"""Checkpoints that survive a kill: write to a temporary folder, then rename.

Layout of ``<output_dir>/checkpoints/``::

    step-000050/  model/ (save_pretrained, safetensors: loads with AutoModelForCausalLM)
                  tokenizer files, state/ (accelerate: optimizer, scheduler, RNG), trainer_state.json
    latest        text file naming the newest complete checkpoint (replaced atomically)

A kill during a save leaves at most a ``.tmp-*`` folder, which is ignored and cleaned up; ``latest``
only ever names a folder that was completely written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "trainer_state.json").exists():
        raise RuntimeError(f"{pointer} names {path.name}, which is incomplete; remove it to start over")
    return path


def save_checkpoint(accelerator, model, tokenizer, output_dir, step: int, trainer_state: dict, keep: int = 2) -> Path:
    """Save everything needed to resume at ``step``; returns the checkpoint folder."""
    root = checkpoint_root(output_dir)
    name = f"step-{step:06d}"
    tmp = root / f".tmp-{name}"
    final = root / name
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(tmp / "model"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "model"))
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", name)
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
