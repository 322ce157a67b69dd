"""`pluralign aggregate RUN_DIR` end to end on tiny EM run directories built per the run-directory layout,
then `pluralign eval` on the mixture folder it writes; numbers recomputed here independently."""

import json

import numpy as np
import pytest
from mixture_runs import build_em_run

from pluralign.cli import main
from pluralign.eval.world_eval import candidate_distributions
from pluralign.mixture import MixturePolicy, world_log_ratios
from pluralign.worlds import tiny_world


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    run = build_em_run(tmp_path_factory.mktemp("agg") / "run", kind="lora", weights=(0.7, 0.3), world="tiny")
    assert main(["aggregate", str(run), "--regret", "kl", "--hedge-steps", "30000"]) == 0
    return run


def test_world_run_is_aggregated_exactly(world_run):
    out = json.loads((world_run / "aggregate" / "regret.json").read_text())
    assert out["method"] == "world" and out["regret_kind"] == "kl" and out["n_types"] == 2
    assert out["prompts"]["n_used"] == 2
    mix = MixturePolicy.from_em_run(world_run)
    want = world_log_ratios(mix, tiny_world())
    np.testing.assert_allclose(out["log_ratios"], want.L, rtol=1e-12)
    regret = np.array(out["regret"])
    np.testing.assert_allclose(regret, np.diag(want.L)[None, :] - want.L, rtol=1e-12)
    assert np.all(regret >= -1e-12)  # a KL: never negative
    a, b = regret[0, 1], regret[1, 0]  # two types: the LP equalises a w_1 = b w_0
    np.testing.assert_allclose(out["weights"]["lp"], [a / (a + b), b / (a + b)], rtol=1e-7)
    worst = out["worst_case_regret"]
    assert worst["mmra_lp"] <= min(worst["type_0"], worst["type_1"], worst["uniform"])
    np.testing.assert_allclose(out["regret_reward_units"], 0.1 * regret, rtol=1e-12)
    saved = MixturePolicy.from_pretrained(world_run / "aggregate" / "mixture")
    np.testing.assert_allclose(saved.weights, out["weights"]["lp"], rtol=1e-12)
    # the world's true group regrets: type 1 alone recomputed from its own candidate distributions
    world = tiny_world()
    with mix.type_policy(1) as module:
        dists = candidate_distributions(module, mix.tokenizer, world)
    for g, name in enumerate(world.group_names):
        want = np.mean([world.rewards[x][g].max() - world.rewards[x][g] @ dists[x] for x in range(world.n_prompts)])
        assert out["world_group_regret"]["type_1"][name] == pytest.approx(want, rel=1e-6)
    assert out["world_worst_group_regret"]["uniform"] == max(out["world_group_regret"]["uniform"].values())


def test_eval_scores_the_mixture_folder_as_the_w_mixture_of_its_conditioned_types(world_run, tmp_path, capsys):
    """`pluralign eval` on the mixture folder: sum_j w_j pi_j(.|x, C), so every regret of the mixture is
    the w-weighted sum of its types' regrets (the LP's game is exactly the deployed policy's)."""
    folder = world_run / "aggregate" / "mixture"
    assert main(["eval", str(folder), "--world", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    mix = MixturePolicy.from_pretrained(folder)
    w = mix.weights
    world = tiny_world()
    types = []  # [K][X] each type's candidate distribution, from its own module
    for _, module in mix.type_policies():
        types.append(candidate_distributions(module, mix.tokenizer, world))
    with mix.reference() as ref:
        reference = candidate_distributions(ref, mix.tokenizer, world)
    for x in range(world.n_prompts):
        want = sum(w[j] * types[j][x] for j in range(mix.n_types))
        np.testing.assert_allclose(result["policy"]["distributions"][x], want, rtol=1e-6)
    deployed = [np.array(d) for d in result["policy"]["distributions"]]
    # the implicit-reward regret of type i for the deployed policy equals sum_j w_j Regret[i, j] (reward regret)
    out = json.loads((world_run / "aggregate" / "regret.json").read_text())
    L = np.array(out["log_ratios"])
    regret = np.diag(L)[:, None] - L
    for i in range(mix.n_types):
        ratio = [np.log(types[i][x]) - np.log(reference[x]) for x in range(world.n_prompts)]
        got = L[i, i] - np.mean([deployed[x] @ ratio[x] for x in range(world.n_prompts)])
        assert got == pytest.approx(regret[i] @ w, rel=1e-6, abs=1e-9)
    # the world's true per-group regret likewise, in eval.json and in aggregate's regret.json
    for g, name in enumerate(world.group_names):
        per_type = [out["world_group_regret"][f"type_{j}"][name] for j in range(mix.n_types)]
        assert result["policy"]["mean"]["regret"][name] == pytest.approx(w @ per_type, rel=1e-6)
        assert out["world_group_regret"]["mmra_lp"][name] == pytest.approx(w @ per_type, rel=1e-6)
    assert candidate_distributions(mix, mix.tokenizer, world)[0].shape == (3,)
    with pytest.raises(SystemExit, match="--data needs one model; .* is a mixture policy"):
        main(["eval", str(folder), "--world", "tiny", "--reference", "tiny", "--data", str(tmp_path / "eval.json"),
              "--out", str(tmp_path / "x")])


def test_sampled_run_on_its_data_prompts(tmp_path, pairs_file):
    run = build_em_run(tmp_path / "run", kind="full", n_types=2, world=None, data_path=str(pairs_file), noise=0.15)
    assert main(["aggregate", str(run), "--num-completions", "3", "--max-new-tokens", "6", "--max-prompts", "4",
                 "--importance", "1,4", "--hedge-steps", "20000", "--solver", "hedge", "--out", str(tmp_path / "agg")]) == 0
    out = json.loads((tmp_path / "agg" / "regret.json").read_text())
    assert out["method"] == "sampled" and out["n_samples_per_type"] == 12
    assert out["prompts"] == {"source": str(pairs_file), "n_distinct": 6, "n_used": 4}
    L, se = np.array(out["log_ratios"]), np.array(out["log_ratios_stderr"])
    assert se.shape == (2, 2) and np.all(se > 0)
    np.testing.assert_allclose(out["regret"], np.diag(L)[:, None] - L, rtol=1e-12)
    R = np.array(out["payoff"])
    np.testing.assert_allclose(R[2], 4 * np.array(out["regret"])[1], rtol=1e-12)  # importance c = (1, 4)
    saved = MixturePolicy.from_pretrained(tmp_path / "agg" / "mixture")
    np.testing.assert_allclose(saved.weights, out["weights"]["hedge"], rtol=1e-12)
    assert out["mixture"]["solver"] == "hedge"


@pytest.mark.parametrize("args, message", [
    (["--importance", "1,2,3"], "importance: expected 2 positive numbers"),
    (["--mode", "world", "--prompts", "p.txt"], "--prompts applies to sampled mode"),
    (["--prompts", "p.txt"], "--prompts p.txt: no such file"),
    (["--regret", "kl", "--max-prompts", "0"], "max_prompts and hedge_steps: expected >= 1"),
])
def test_bad_arguments_fail_before_any_output(world_run, tmp_path, capsys, args, message):
    out = tmp_path / "agg"
    assert main(["aggregate", str(world_run), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_run_directory(tmp_path, capsys):
    assert main(["aggregate", str(tmp_path / "nope")]) == 2
    assert "not an EM run directory" in capsys.readouterr().err
