"""The EM-DPO loop on the tiny model: the M-step is weighted DPO through the offline loop, split
halves feed the M- and E-steps disjoint votes, and a resumed run equals an uninterrupted one."""

import copy
import json

import numpy as np
import pytest
import torch
from em_worlds import em_overrides, opposite_world
from tolerance import assert_close_scaled

from pluralign.data.records import PreferenceRecord
from pluralign.em import loop
from pluralign.em.config import EMRunConfig
from pluralign.em.types import LoraTypes
from pluralign.models import load_model, load_tokenizer
from pluralign.train.config import load_config
from pluralign.train.offline import train


def _adapter(types, k):
    return {n: p.detach().clone() for n, p in types.model.named_parameters() if f".type_{k}." in n}


def test_one_hot_weighted_m_step_equals_dpo_on_the_subset(tmp_path):
    tok = load_tokenizer("byte")
    base = load_model("tiny", tok, seed=0)
    records = opposite_world().sample_pairs(24, seed=0, n_per_annotator=2)  # 12 annotators
    annotators = sorted({r.annotator_id for r in records})
    annotator = np.array([annotators.index(r.annotator_id) for r in records])
    gamma_k = (np.arange(len(annotators)) % 2 == 0).astype(float)  # one-hot: type k owns the even annotators
    subset = [r for r, a in zip(records, annotator) if gamma_k[a] == 1.0]
    # One batch per step (the whole set, or the whole subset) and no clipping: the weighted step's gradient
    # is the subset's times |subset| / N, which AdamW's update does not see (eps 1e-12).
    over = ["objective.name=dpo", "optim.eps=1e-12", "optim.max_grad_norm=null", "train.epochs=3"]
    cfg = load_config(None, em_overrides(tmp_path / "em", "train.batch_size=24", *over), cls=EMRunConfig)
    weighted = LoraTypes(copy.deepcopy(base), cfg.model.lora, 2)
    plain = LoraTypes(copy.deepcopy(base), cfg.model.lora, 2)
    result = loop.m_step(cfg, tmp_path / "em", 0, weighted.policy(0), tok, records, gamma_k, annotator)
    sub = load_config(None, em_overrides(tmp_path / "plain", f"train.batch_size={len(subset)}", *over))
    reference = train(sub, model=plain.policy(0), tokenizer=tok, records=subset)
    assert result.steps == reference.steps == 3
    moved = _adapter(weighted, 0)
    assert any(float(v.abs().max()) > 1e-3 for n, v in moved.items() if "lora_B" in n)  # it trained
    for name, value in _adapter(plain, 0).items():
        assert_close_scaled(moved[name], value, rel=1e-4, what=name)
    # the other type's adapter is untouched
    for name, value in _adapter(weighted, 1).items():
        assert torch.equal(value, LoraTypes(copy.deepcopy(base), cfg.model.lora, 2).initial[1][name])


def _run(out, records, *extra, **kw):
    cfg = load_config(None, em_overrides(out, "em.rounds=2", "train.epochs=2", *extra), cls=EMRunConfig)
    return loop.run_em(cfg, records=records, **kw)


def test_split_halves_give_the_m_and_e_steps_disjoint_votes(tmp_path, monkeypatch):
    records = opposite_world().sample_rankings(32, seed=0, n_per_annotator=4)
    seen = []
    real = loop.m_step

    def spy(cfg, out, k, model, tok, recs, gamma_k, annotator, **kw):
        seen.append((k, {id(r) for r in recs}, len(recs)))  # the records themselves, not copies
        return real(cfg, out, k, model, tok, recs, gamma_k, annotator, **kw)

    monkeypatch.setattr(loop, "m_step", spy)
    result = _run(tmp_path / "run", records, "em.init=random", "train.batch_size=8", "train.epochs=1")
    assert [k for k, _, _ in seen] == [0, 1, 0, 1]
    assert seen[0][1] == seen[1][1] and seen[2][1] == seen[3][1]  # every type trains on the round's half
    assert seen[0][2] + seen[2][2] == len(records) and not seen[0][1] & seen[2][1]  # the halves partition
    per_annotator = {}
    for r in records:
        per_annotator.setdefault(r.annotator_id, [0, 0])[0] += 1
    by_id = {id(r): r for r in records}
    assert seen[0][1] | seen[2][1] == set(by_id)
    for i in seen[0][1]:
        per_annotator[by_id[i].annotator_id][1] += 1
    assert all(abs(2 * half - n) <= 1 for n, half in per_annotator.values())  # 4 votes: 2 + 2
    assert len(result.rounds) == 2 and result.gamma.shape == (8, 2)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    records = opposite_world().sample_rankings(32, seed=1, n_per_annotator=4)
    # a ranking whose responses are identical once truncated to data.max_length: dropped, and counted
    long = [20 * "A" + end for end in "xyz"]
    records.append(PreferenceRecord("P:", long, [0, 1, 2], annotator_id=records[0].annotator_id))
    extra = ("em.warm_start=true", "train.batch_size=16")
    whole = _run(tmp_path / "whole", records, *extra)
    report = (tmp_path / "whole" / "data_report.txt").read_text()
    assert "32 tokenized examples" in report and "1 skipped (identical_tokens: 1)" in report, report
    assert "EM runs on the 32 kept records of 33 (1 dropped: record 32: responses 0 and 1 are identical" in report

    calls = {"n": 0}
    real = loop.m_step

    def crash(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # round 1, type 1: round 0 is saved, round 1 is lost
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(loop, "m_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path / "cut", records, *extra)
    state = json.loads((tmp_path / "cut" / "em_state.json").read_text())
    assert state["rounds"] == 1
    monkeypatch.setattr(loop, "m_step", real)
    resumed = _run(tmp_path / "cut", records, *extra, "train.resume=true")

    np.testing.assert_allclose(resumed.gamma, whole.gamma, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(resumed.type_weights, whole.type_weights, rtol=1e-6)
    for k in range(2):
        a, b = _adapter(resumed.types, k), _adapter(whole.types, k)
        for name in a:
            assert_close_scaled(a[name], b[name], rel=1e-5, what=name)
    rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("whole", "cut")]
    assert [r["round"] for r in rows[1]] == [0, 1]
    for a, b in zip(*rows):
        assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-6)
        assert a["type_weights"] == pytest.approx(b["type_weights"], rel=1e-6)
    assert json.loads((tmp_path / "cut" / "em_result.json").read_text())["rounds"] == 2


def test_last_epoch_estep_reads_each_records_m_step_loss_and_scores_the_rest(tmp_path):
    """em.estep=last_epoch: the hook keeps the per-record losses of the M-step's last epoch under the
    records' own indices; with a learning rate too small to move the policy they equal the exact
    E-step's minus log-likelihoods, and the records the epoch did not reach (36 = 4 x 8 + 4) are
    scored exactly."""
    tok = load_tokenizer("byte")
    records = opposite_world().sample_rankings(36, seed=2, n_per_annotator=4)
    annotator = np.array([sorted({r.annotator_id for r in records}).index(r.annotator_id) for r in records])
    cfg = load_config(None, em_overrides(tmp_path / "em", "train.batch_size=8", "train.epochs=2", "optim.lr=1e-12",
                                         "em.estep=last_epoch", "em.split_halves=false"), cls=EMRunConfig)
    types = LoraTypes(load_model("tiny", tok, seed=0), cfg.model.lora, 1)
    with torch.no_grad():  # a policy away from the reference, so that records' likelihoods differ
        g = torch.Generator().manual_seed(0)
        for name, p in types.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    last = loop.LastEpochLosses(len(records))
    result = loop.m_step(cfg, tmp_path / "em", 0, types.policy(0), tok, records, np.ones(9), annotator, on_losses=last)
    assert last.epoch == 1 and int(np.isnan(last.losses).sum()) == 4
    records, data, _ = loop._usable(records, cfg, tok)
    scorer = loop._Scorer(cfg, types, tok.pad_token_id)
    ref = scorer.reference(data, result.layout, tok, tmp_path / "em" / "reference_cache")
    fields = loop.example_tensors(data)
    exact = loop._scores(cfg, scorer, data, fields, ref, 0, result.layout)[0]
    assert np.ptp(exact) > 0.1  # the records' likelihoods differ, so a misplaced loss would show
    seen = ~np.isnan(last.losses)
    np.testing.assert_allclose(-last.losses[seen], exact[seen], rtol=1e-5, atol=1e-6)
    filled = loop._log_likelihood(cfg, scorer, data, fields, ref, 0, result.layout, last)
    np.testing.assert_allclose(filled, exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(filled[~seen], exact[~seen], rtol=1e-6, atol=1e-7)  # scored exactly
