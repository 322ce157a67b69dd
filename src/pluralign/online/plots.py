"""PNG plots of an online run's dynamics: per-candidate mass and entropy over rounds, optionally
next to the lab's exact trajectory for the same problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _axes(n_rows: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, 2, figsize=(10, 3.2 * n_rows), squeeze=False)
    return plt, fig, axes


def plot_trajectories(panels: list[dict], path: Path, title: str) -> Path:
    """One row per panel: {"name", "loop": [T, K] masses, "lab": [T, K] or None, "labels": names}.
    Left: mass of each candidate per round (loop solid, lab dashed); right: entropy."""
    plt, fig, axes = _axes(len(panels))
    for row, panel in zip(axes, panels):
        loop = np.asarray(panel["loop"])
        lab = panel.get("lab")
        names = panel.get("labels") or [f"y{k}" for k in range(loop.shape[1])]
        for k in range(loop.shape[1]):
            line, = row[0].plot(loop[:, k], marker="o", ms=3, label=f"{names[k]} (LM loop)")
            if lab is not None:
                row[0].plot(np.asarray(lab)[:, k], ls="--", color=line.get_color(), label=f"{names[k]} (lab, exact)")
        row[0].set(title=f"{panel['name']}: candidate mass", xlabel="round", ylabel="pi_t(y)", ylim=(0, 1))
        row[0].legend(fontsize=7, ncol=2)
        ent = lambda p: -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)  # noqa: E731
        row[1].plot(ent(loop), marker="o", ms=3, label="LM loop")
        if lab is not None:
            row[1].plot(ent(np.asarray(lab)), ls="--", label="lab, exact")
        row[1].set(title=f"{panel['name']}: entropy", xlabel="round", ylabel="nats", ylim=(0, None))
        row[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run(rounds: list[dict], path: Path, title: str, max_prompts: int = 4) -> Path:
    """The monitor rows of one run: the first ``max_prompts`` prompts."""
    X = min(len(rounds[0]["online/pi"]), max_prompts)
    panels = [{"name": f"prompt {x}", "loop": np.array([r["online/pi"][x] for r in rounds])} for x in range(X)]
    return plot_trajectories(panels, path, title)
