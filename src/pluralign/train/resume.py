"""Whether a run may be resumed with the configuration it is given now.

Resuming continues the stored run, so everything that decides its numbers (data, model, objective,
optimizer, schedule length, batch size, number of processes, seeds) must be as stored; only keys that
change what is logged or saved, or where, may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from pluralign.train.checkpoint import latest_checkpoint
from pluralign.train.config import ConfigError

# Keys that do not change the run's numbers (flattened "section.key" names).
RUN_NEUTRAL = frozenset({
    "train.resume", "train.overwrite", "train.output_dir", "train.log_every", "train.eval_every", "train.save_every",
    "train.keep_checkpoints", "train.report_to", "train.progress_bar", "train.progress_every",
    "train.max_nonfinite_steps", "train.reuse_freed_memory", "reference.cache_dir", "reference.precompute",
})


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, dict) and key != "args":
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_resumable(stored: dict, current: dict, stored_processes: int | None, current_processes: int) -> None:
    """Raise :class:`ConfigError` naming every key (and the number of processes) whose value differs
    from the stored run's in a way that changes the run."""
    old, new = flatten(stored), flatten(current)
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if k not in RUN_NEUTRAL and old.get(k) != new.get(k)]
    if stored_processes is not None and stored_processes != current_processes:
        changed.append(f"number of processes: {stored_processes} -> {current_processes}")
    if changed:
        raise ConfigError("train.resume: the stored run was made with other settings that change its result ("
                          + "; ".join(changed) + "); resume with the stored settings, or start a new run "
                          "(another train.output_dir, or train.overwrite=true)")


def check_resume(out: Path, config: dict, num_processes: int) -> None:
    """Compare ``config`` (JSON-normalised) and ``num_processes`` with the run stored in ``out``
    (its config.json and latest checkpoint); nothing to compare is fine (the run starts afresh)."""
    stored_config = out / "config.json"
    if not stored_config.exists():
        return
    ckpt = latest_checkpoint(out)
    stored_processes = json.loads((ckpt / "trainer_state.json").read_text()).get("num_processes") if ckpt else None
    check_resumable(json.loads(stored_config.read_text()), config, stored_processes, num_processes)
