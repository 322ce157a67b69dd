"""E-step of EM-DPO: per-record log-likelihoods from the objectives and log-space posteriors,
against hand-computed values; identifiability diagnostics; initialisations."""

import math

import numpy as np
import pytest
import torch

from pluralign.data.identifiability import identifiability
from pluralign.data.loaders import DataError
from pluralign.data.records import PreferenceRecord
from pluralign.em.config import EMConfig, EMRunConfig, check_em_config
from pluralign.em.estep import floor_weights, posterior, record_scores
from pluralign.em.init import kmeans_gamma, read_features, split_halves
from pluralign.lab.identify import adjusted_rand_index
from pluralign.train.config import ConfigError, load_config
from pluralign.worlds import tiny_world


def _lse(*xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _logsig(z):
    return -math.log1p(math.exp(-z))


def _fields(rankings, kmax):
    ranking = torch.full((len(rankings), kmax), -1, dtype=torch.long)
    mask = torch.zeros((len(rankings), kmax), dtype=torch.bool)
    for i, (r, k) in enumerate(rankings):
        ranking[i, : len(r)] = torch.tensor(r)
        mask[i, :k] = True
    return {"ranking": ranking, "num_ranked": torch.tensor([len(r) for r, _ in rankings]), "response_mask": mask,
            "preference": torch.ones(len(rankings))}


def test_posterior_matches_a_hand_computed_example():
    # Record 0 (annotator 0): a pair, chosen = response 0. Record 1 (annotator 1): a full ranking 2 > 1 > 0.
    # Record 2 (annotator 1): the same pair as record 0 with weight 2. Annotator 2 has no records.
    fields = _fields([((0, 1), 2), ((2, 1, 0), 3), ((0, 1), 2)], 3)
    ref = torch.tensor([[-1.5, -1.5, 0.0], [0.0, 0.0, 0.0], [-1.5, -1.5, 0.0]])
    counts = torch.ones(3, 3)
    type0 = torch.tensor([[-1.0, -2.0, 0.0], [0.0, -1.0, -2.0], [-1.0, -2.0, 0.0]])
    type1 = torch.tensor([[-2.0, -1.0, 0.0], [-2.0, -1.0, 0.0], [-2.0, -1.0, 0.0]])
    beta = 0.5
    ll0, _ = record_scores("plackett_luce", beta, {}, type0, ref, counts, fields)
    ll1, _ = record_scores("plackett_luce", beta, {}, type1, ref, counts, fields)
    # by hand: pair h = (pi_w - ref_w) - (pi_l - ref_l); ranking rewards r = beta * (pi - ref)
    r0, r1 = [beta * v for v in (0.0, -1.0, -2.0)], [beta * v for v in (-2.0, -1.0, 0.0)]
    pl = lambda r: r[2] - _lse(*r) + r[1] - _lse(r[0], r[1])  # noqa: E731
    expected0 = [_logsig(beta * 1.0), pl(r0), _logsig(beta * 1.0)]
    expected1 = [_logsig(-beta * 1.0), pl(r1), _logsig(-beta * 1.0)]
    np.testing.assert_allclose(ll0, expected0, rtol=1e-12)
    np.testing.assert_allclose(ll1, expected1, rtol=1e-12)

    eta = np.array([0.25, 0.75])
    weights = np.array([1.0, 1.0, 2.0])
    gamma, total = posterior(np.stack([ll0, ll1], 1), np.array([0, 1, 1]), 3, eta, weights)
    a0 = [math.log(0.25) + expected0[0], math.log(0.75) + expected1[0]]
    a1 = [math.log(0.25) + expected0[1] + 2 * expected0[2], math.log(0.75) + expected1[1] + 2 * expected1[2]]
    for i, a in enumerate((a0, a1)):
        norm = _lse(*a)
        np.testing.assert_allclose(gamma[i], [math.exp(a[0] - norm), math.exp(a[1] - norm)], rtol=1e-12)
    np.testing.assert_allclose(gamma[2], eta, rtol=1e-12)  # no votes: the prior
    assert total == pytest.approx(_lse(*a0) + _lse(*a1), rel=1e-12)


def test_posterior_is_stable_for_many_votes():
    # 10 000 votes of log-likelihood -3 vs -3.1 each: the scores are -30000 vs -31000, exp() would underflow.
    ll = np.tile([[-3.0, -3.1]], (10_000, 1))
    gamma, total = posterior(ll, np.zeros(10_000, dtype=int), 1, np.array([0.5, 0.5]))
    assert np.all(np.isfinite(gamma)) and gamma[0, 0] == pytest.approx(1.0) and gamma[0, 1] < 1e-300 + 1e-40
    assert total == pytest.approx(math.log(0.5) - 30_000 + math.log1p(math.exp(-1000.0)), rel=1e-12)


def test_dpo_and_plackett_luce_agree_on_pairs():
    fields = _fields([((1, 0), 2)], 2)
    pol, ref = torch.tensor([[-0.3, -1.1]]), torch.tensor([[-0.7, -0.2]])
    a, _ = record_scores("dpo", 0.3, {}, pol, ref, torch.ones(1, 2), fields)
    b, _ = record_scores("plackett_luce", 0.3, {}, pol, ref, torch.ones(1, 2), fields)
    h = (-1.1 + 0.2) - (-0.3 + 0.7)
    np.testing.assert_allclose(a, [_logsig(0.3 * h)], rtol=1e-6)  # float32 inputs
    np.testing.assert_allclose(b, a, rtol=1e-12)


def test_floor_keeps_every_type_alive():
    np.testing.assert_allclose(floor_weights([1.0, 0.0, 0.0], 0.01), np.array([1.0, 0.01, 0.01]) / 1.02)
    np.testing.assert_allclose(floor_weights([0.3, 0.7], 0.01), [0.3, 0.7])


def test_identifiability_warns_on_one_binary_comparison_per_annotator():
    world = tiny_world()
    pairs = world.sample_pairs(20, seed=0, n_per_annotator=1)
    report = identifiability(pairs)
    assert report.num_annotators == 20 and report.annotators_with_one_binary_comparison_only == 20
    assert report.comparisons_per_annotator == {"min": 1, "median": 1, "max": 1}
    assert not report.identifiable and "single binary comparison" in report.warnings[0]
    assert "Lemma 4.1" in report.warnings[0]

    rankings = world.sample_rankings(40, seed=0, n_per_annotator=4)
    report = identifiability(rankings)
    assert report.identifiable and report.num_annotators == 10 and report.annotators_with_rankings_of_3plus == 10
    assert report.comparisons_per_annotator["max"] == 12  # 4 full rankings of 3: 3 implied pairs each
    assert report.distinct_rankings_per_annotator["max"] <= 4

    several = world.sample_pairs(40, seed=0, n_per_annotator=4)  # repeated comparisons (Lemma 4.3): no warning
    assert identifiability(several).identifiable
    anonymous = [PreferenceRecord.from_pair("p", "a", "b")]
    assert "annotator_id" in identifiability(anonymous).warnings[0]


def test_kmeans_initialisation_recovers_feature_clusters(tmp_path):
    rng = np.random.default_rng(0)
    annotators = [f"a{i}" for i in range(30)]
    truth = np.arange(30) % 3
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    feats = {a: centres[t] + 0.3 * rng.standard_normal(2) for a, t in zip(annotators, truth)}
    path = tmp_path / "features.jsonl"
    path.write_text("".join(f'{{"annotator_id": "{a}", "features": {v.tolist()}}}\n' for a, v in feats.items()))
    read = read_features(path)
    gamma = kmeans_gamma(annotators, read, 3, np.random.default_rng(1))
    assert gamma.shape == (30, 3) and set(gamma.sum(1)) == {1.0} and set(np.unique(gamma)) == {0.0, 1.0}
    assert adjusted_rand_index(truth, gamma.argmax(1)) == 1.0
    csv = tmp_path / "features.csv"
    csv.write_text("annotator_id,x,y\n" + "".join(f"{a},{v[0]},{v[1]}\n" for a, v in feats.items()))
    np.testing.assert_allclose(read_features(csv)["a7"], feats["a7"])
    with pytest.raises(DataError, match="no feature vector for 1 of 31 annotators"):
        kmeans_gamma(annotators + ["stranger"], read, 3, np.random.default_rng(1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"annotator_id": "a0", "features": [1, "x"]}\n')
    with pytest.raises(DataError, match="entry 1 .*numbers"):
        read_features(bad)


def test_split_halves_alternate_each_annotators_votes():
    annotator = np.repeat(np.arange(5), [1, 2, 5, 6, 7])
    half = split_halves(annotator, np.random.default_rng(0))
    for a, n in enumerate([1, 2, 5, 6, 7]):
        ones = int(half[annotator == a].sum())
        assert ones in (n // 2, n - n // 2)  # the two halves differ in size by at most one
    again = split_halves(annotator, np.random.default_rng(0))
    np.testing.assert_array_equal(half, again)
    assert not np.array_equal(half, split_halves(annotator, np.random.default_rng(1)))
    singles = split_halves(np.arange(200), np.random.default_rng(0))  # one vote each: either half
    assert 60 < singles.sum() < 140


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="em.n_types = 0"):
        load_config(None, ["em.n_types=0"], cls=EMRunConfig)
    with pytest.raises(ConfigError, match="em.init = 'kmeans' needs em.features"):
        EMConfig(init="kmeans")
    with pytest.raises(ConfigError, match="em.eta_floor"):
        EMConfig(n_types=4, eta_floor=0.3)
    cfg = load_config(None, ["objective.name=ipo"], cls=EMRunConfig)
    with pytest.raises(ConfigError, match="objective.name = 'ipo'"):
        check_em_config(cfg)
    with pytest.raises(ConfigError, match="needs model.lora"):
        check_em_config(load_config(None, ["objective.name=dpo"], cls=EMRunConfig))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["em.typess=2"], cls=EMRunConfig)
    with pytest.raises(ConfigError, match="em.estep = 'last_epoch' .* set em.split_halves=false"):
        EMConfig(init="random", estep="last_epoch")
    with pytest.raises(ConfigError, match="em.score_batch_size = 0; expected null or an integer >= 1"):
        EMConfig(score_batch_size=0)


def test_validate_data_reports_identifiability(tmp_path, capsys):
    import json

    from pluralign.cli import build_parser
    from pluralign.data.validate import validate_command

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": r.prompt, "chosen": r.responses[0], "rejected": r.responses[1], "annotator_id": r.annotator_id}
            for r in tiny_world().sample_pairs(12, seed=0, n_per_annotator=1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_command(build_parser().parse_args(["validate-data", str(path)])) == 0
    out = capsys.readouterr().out
    assert "identifiability of annotator types:" in out and "annotators: 12 (0 records without annotator_id)" in out
    assert "warning: every one of the 12 annotators gave a single binary comparison" in out
