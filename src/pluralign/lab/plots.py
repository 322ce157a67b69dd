"""Figures of the lab's experiments (matplotlib, Agg backend, imported lazily).

Every panel has axis labels and a legend; a panel that shows only part of a run says so in its
title; bars carry their values so a bar of height 0 is still visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def labelled_bars(ax, positions, values, width: float, label: str, color=None, fmt: str = "{:.3f}"):
    """Bars with their values written above them and an outline, so that a zero bar shows as a
    marked line at 0 with "0.000" above it rather than as nothing."""
    values = np.asarray(values, dtype=float)
    bars = ax.bar(positions, values, width, label=label, color=color, edgecolor="black", linewidth=0.8)
    # the bar's own colour as a thick line at its value: what remains visible of a zero bar
    for x, v, patch in zip(positions, values, bars.patches):
        ax.plot([x - 0.45 * width, x + 0.45 * width], [v, v], color=patch.get_facecolor(), lw=4,
                solid_capstyle="butt", zorder=3)
        ax.plot([x - 0.45 * width, x + 0.45 * width], [v, v], color="black", lw=0.8, zorder=4)
    for x, v in zip(positions, values):
        ax.annotate(fmt.format(v), (x, max(v, 0.0)), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)
    return bars


def save(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def collapse_figure(rows: list[dict], p_majority: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    betas = sorted({r["beta"] for r in rows})
    for ref in sorted({r["ref_majority"] for r in rows}):
        ys = [next(r["kl_rlhf_minority"] for r in rows if r["beta"] == b and r["ref_majority"] == ref) for b in betas]
        ax.plot(betas, ys, marker="o", label=f"KL-RLHF, pi_ref(y1)={ref:g}")
    ax.plot(betas, [next(r["pm_rlhf_minority"] for r in rows if r["beta"] == b) for b in betas], "k--",
            label="PM-RLHF softmax(r/beta)")
    ax.axhline(1 - p_majority, color="g", lw=2, label=f"preference matching ({1 - p_majority:g})")
    ax.set_xscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("minority mass pi(y2)")
    ax.set_title(f"Preference collapse, P(y1 > y2) = {p_majority:g}")
    ax.legend(fontsize=7)
    save(fig, path)


def dynamics_figure(cases: list[dict], trajectories: dict, path: Path, max_shown: int = 400) -> None:
    plt = pyplot()
    n = len(cases)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.4 * rows), squeeze=False)
    for ax, case in zip(axes.ravel(), cases):
        traj = trajectories[case["name"]]
        total = traj.shape[0] - 1
        shown = min(total, max_shown)
        for k in range(traj.shape[1]):
            ax.plot(np.arange(shown + 1), traj[: shown + 1, k], lw=1, label=f"pi(y{k + 1})")
        part = f"rounds 0-{shown} of {total} shown" if shown < total else f"all {total} rounds"
        ax.set_title(f"{case['name']}\n{case['status']}, H={case['final_entropy']:.3g} ({part})", fontsize=8)
        ax.set_xlabel("round t")
        ax.set_ylabel("pi_t(y)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, loc="upper right")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    save(fig, path, dpi=110)


def phase_figure(result: dict, path: Path) -> None:
    plt = pyplot()
    a, alphas, strengths = result["a"], result["alphas"], result["beta_lam"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    image = ax.pcolormesh(strengths, alphas, np.log10(result["cycle_strength"] + 1e-32), shading="nearest",
                          cmap="viridis")
    fig.colorbar(image, ax=ax, label="log10 cycle strength (last-window variance)")
    curve_alpha = np.linspace(0, 1, 200)
    ax.plot(np.sqrt(3 * (1 - curve_alpha**2)) / a, curve_alpha, "r-", lw=2,
            label=r"$\alpha^2 + a^2(\beta\lambda)^2/3 = 1$")
    undetermined = result["status"] == "undetermined"
    if undetermined.any():
        al, st = np.meshgrid(alphas, strengths, indexing="ij")
        ax.scatter(st[undetermined], al[undetermined], marker="x", s=10, color="white", label="not settled")
    ax.set_xlim(strengths[0], strengths[-1])
    ax.set_xlabel(r"$\beta\lambda$")
    ax.set_ylabel(r"$\alpha$")
    ax.set_title(f"MRS-IPO, 3-cycle a={a:g}, {result['steps']} rounds: agreement "
                 f"{result['agreement_off_boundary']:.3f}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    save(fig, path)


def identify_figure(result: dict, path: Path) -> None:
    plt = pyplot()
    names = list(result["designs"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    labelled_bars(ax, x - width / 2, [result["designs"][n]["ari"] for n in names], width,
                  "ARI, decisive labels", color="tab:blue")
    labelled_bars(ax, x + width / 2, [result["designs"][n]["ari_map"] for n in names], width,
                  "ARI, MAP labels", color="tab:orange")
    ax.scatter(x, [result["designs"][n]["ari_chance_95"] for n in names], marker="v", color="red", zorder=4,
               label="chance level (95% of random labels below)")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_xlabel("observation design")
    ax.set_ylabel("adjusted Rand index")
    ax.set_ylim(-0.1, 1.45)
    ax.set_title(f"Recovering +theta / -theta types, {result['n_annotators']} annotators", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    save(fig, path)


def mmra_figure(result: dict, path: Path) -> None:
    plt = pyplot()
    n_types = result["n_types"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"pi_{j + 1}" for j in range(n_types)] + ["MMRA\n(LP)", "MMRA\n(Hedge)"]
    values = list(result["worst_case_regret_single_policies"]) + [result["worst_case_regret_lp"],
                                                                  result["worst_case_regret_hedge"]]
    colors = ["tab:grey"] * n_types + ["tab:green", "tab:olive"]
    x = np.arange(len(labels))
    labelled_bars(left, x, values, 0.6, "worst-type regret", color=colors, fmt="{:.3f}")
    left.set_xticks(x, labels)
    left.set_xlabel("deployed policy")
    left.set_ylabel("worst-type regret")
    left.set_title("Single type policies vs the min-max-regret mixture", fontsize=9)
    left.legend(fontsize=7)
    xw = np.arange(n_types)
    width = 0.38
    labelled_bars(right, xw - width / 2, result["weights_lp"], width, "LP (exact)", color="tab:green")
    labelled_bars(right, xw + width / 2, result["weights_hedge"], width,
                  f"optimistic Hedge, T={result['hedge_steps']}", color="tab:olive")
    right.set_xticks(xw, [f"pi_{j + 1}" for j in range(n_types)])
    right.set_xlabel("type policy")
    right.set_ylabel("mixture weight w")
    right.set_ylim(0, 1.1)
    right.set_title("MMRA mixture weights", fontsize=9)
    right.legend(fontsize=7)
    save(fig, path)


def bandit_figure(result: dict, path: Path) -> None:
    plt = pyplot()
    G = result["n_groups"]
    x = np.arange(G)
    width = 0.27
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labelled_bars(ax, x - width, result["tv_dpo"], width, "DPO (one policy)", color="tab:grey")
    labelled_bars(ax, x, result["tv_cluster_dpo"], width, f"Cluster-DPO (k-means ARI {result['ari_cluster']:.2f})",
                  color="tab:orange")
    labelled_bars(ax, x + width, result["tv_em_dpo"], width, f"EM-DPO (ARI {result['ari_em']:.2f})",
                  color="tab:blue")
    ax.set_xticks(x, [f"group {g + 1}" for g in range(G)])
    ax.set_xlabel("user group")
    ax.set_ylabel("mean TV to the group's optimal policy")
    ax.set_title(f"Contextual bandit, {result['n_users']} users x {result['pairs_per_user']} pairs, "
                 f"beta={result['beta']:g}", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)
