"""PM divergence of an LM on sampled completions, and the output-probability histograms of
Xiao et al. 2405.16455 (Figs. 2 and 4, from the authors' ``Output_probs.ipynb``; PAPERS.md §2.4).

For each prompt, 2m completions are sampled from the policy and paired (0, 1), (2, 3), ...; for a
pair the policy-implied preference p_pi = pi(y_1|x) / (pi(y_1|x) + pi(y_2|x)) (from the summed
token log-probs of the whole LM, not renormalised over anything) is set against the reward
model's p_r = sigma(r(x, y_1) - r(x, y_2)), and the pair's PM divergence is the Bernoulli
KL(p_r || p_pi) (:func:`pluralign.rl.metrics.pairwise_pm_divergence`). Pairs of two identical
completions have p_pi = p_r = 1/2 and divergence 0 whatever the policy, so a collapsed policy
would look good on them: they are counted and left out of the means and histograms. With
``candidates`` (one collection of texts per prompt) the mean over pairs of two distinct
candidates is reported too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.rl.metrics import rollout_pm_divergence
from pluralign.rl.scoring import encode_prompt


@torch.no_grad()
def sampled_pm_divergence(model, tokenizer, prompts: list[str], reward_fn, pairs_per_prompt: int, max_new_tokens: int,
                          seed: int = 0, candidates=None) -> dict:
    """PM divergence, p_pi and p_r of the distinct pairs among ``pairs_per_prompt`` sampled pairs
    of each prompt. ``reward_fn(prompts, completions) -> rewards`` (e.g. a
    :class:`~pluralign.rl.rewards.ModelReward`)."""
    k = 2 * pairs_per_prompt
    out = TransformersGenerator(model, tokenizer).generate([encode_prompt(tokenizer, p) for p in prompts],
                                                         SamplingParams(max_new_tokens=max_new_tokens, num_completions=k,
                                                                        seed=seed))
    texts = out.texts(tokenizer)
    rewards = torch.as_tensor(np.asarray(reward_fn([p for p in prompts for _ in range(k)], texts), dtype=np.float64))
    seq_logp = (out.logprobs.double() * out.mask).sum(-1).view(len(prompts), k)
    div, p_pi, p_r = rollout_pm_divergence(seq_logp, rewards.view(len(prompts), k))
    ids = out.completion_ids()
    distinct = np.array([ids[i] != ids[i + 1] for i in range(0, len(ids) - 1, 2)], dtype=bool)
    div, p_pi, p_r = (t.numpy()[distinct] for t in (div, p_pi, p_r))
    result = {"divergence": div, "p_policy": p_pi, "p_reward": p_r, "num_pairs": int(distinct.size),
              "identical_pairs": int((~distinct).sum()), "mean_divergence": float(div.mean()) if div.size else 0.0}
    if candidates is not None:
        pair_prompt = np.repeat(np.arange(len(prompts)), pairs_per_prompt)
        both = np.array([texts[2 * i] in candidates[x] and texts[2 * i + 1] in candidates[x]
                         for i, x in enumerate(pair_prompt)], dtype=bool)[distinct]
        result["candidate_pairs"] = int(both.sum())
        result["mean_divergence_candidates"] = float(div[both].mean()) if both.any() else None
    return result


def pm_histogram_figures(results: dict[str, dict], out_dir: Path, colours: dict | None = None) -> list[Path]:
    """``output_probs.png``: per policy, histograms of p_pi and p_r over its sampled pairs (the
    paper's output-probability plots); ``pm_divergence_hist.png``: the per-pair PM divergence of
    every policy. Returns the two paths."""
    from pluralign.lab.plots import pyplot, save

    plt = pyplot()
    out_dir = Path(out_dir)
    names = list(results)
    bins = np.linspace(0.0, 1.0, 21)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        r = results[name]
        ax.hist(r["p_reward"], bins=bins, color="0.6", alpha=0.6, label="reward model sigma(r1 - r2)")
        ax.hist(r["p_policy"], bins=bins, histtype="step", lw=2, color=(colours or {}).get(name, "tab:blue"),
                label="policy pi1 / (pi1 + pi2)")
        ax.set_title(f"{name}: mean PM div. {r['mean_divergence']:.3f}", fontsize=9)
        ax.set_xlabel("preference for the first completion")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("distinct sampled pairs")
    first = out_dir / "output_probs.png"
    save(fig, first)

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    top = max(float(np.max(r["divergence"])) for r in results.values())
    div_bins = np.linspace(0.0, max(top, 1e-3), 31)
    for name in names:
        ax.hist(results[name]["divergence"], bins=div_bins, histtype="step", lw=2,
                color=(colours or {}).get(name), label=f"{name} (mean {results[name]['mean_divergence']:.3f})")
    ax.set_xlabel("PM divergence of a sampled pair, KL_Bern(p_r || p_pi)")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.set_title("Distribution of the per-pair PM divergence")
    ax.legend(fontsize=7)
    second = out_dir / "pm_divergence_hist.png"
    save(fig, second)
    return [first, second]
