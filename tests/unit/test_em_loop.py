"""The EM-DPO loop on the tiny model: the M-step is weighted DPO through the offline loop, split
halves feed the M- and E-steps disjoint votes, and a resumed run equals an uninterrupted one."""

import copy
import json

import numpy as np
import pytest
import torch
from em_worlds import em_overrides, opposite_world
from tolerance import assert_close_scaled

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

    def spy(cfg, out, k, model, tok, recs, gamma_k, annotator):
        seen.append((k, {id(r) for r in recs}, len(recs)))  # the records themselves, not copies
        return real(cfg, out, k, model, tok, recs, gamma_k, annotator)

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
    extra = ("em.warm_start=true", "train.batch_size=16")
    whole = _run(tmp_path / "whole", records, *extra)

    calls = {"n": 0}
    real = loop.m_step

    def crash(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # round 1, type 1: round 0 is saved, round 1 is lost
            raise RuntimeError("killed")
        return real(*args)

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
