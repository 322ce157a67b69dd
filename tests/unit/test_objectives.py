"""Objectives against hand-derived values."""

import math

import pytest
import torch

from pluralign.objectives import (
    PreferenceLogps,
    compute_objective,
    dpo_loss,
    ipo_loss,
    plackett_luce_loss,
    rpo_loss,
    rpo_mean_loss,
)


def _pairs(pc, pr, rc, rr, n=None):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    B = len(pc)
    return PreferenceLogps(
        policy=torch.stack([t(pc), t(pr)], 1),
        reference=torch.stack([t(rc), t(rr)], 1),
        num_tokens=torch.tensor(n if n is not None else [[3.0, 5.0]] * B, dtype=torch.float64),
        ranking=torch.tensor([[0, 1]] * B),
        num_ranked=torch.full((B,), 2),
        response_mask=torch.ones(B, 2, dtype=torch.bool),
    )


def test_dpo_is_ln2_when_policy_equals_reference():
    x = torch.tensor([-3.0, -10.0, -0.5])
    y = torch.tensor([-4.0, -2.0, -7.0])
    loss = dpo_loss(x, y, x, y, beta=0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))
    assert torch.allclose(dpo_loss(x, y, x, y, beta=0.1, label_smoothing=0.2), torch.full((3,), math.log(2.0)))


def test_dpo_hand_value():
    # h = (-1 - -2) - (-3 - -2.5) = 1.5 ; beta h = 0.3 ; loss = log(1 + e^-0.3)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.2)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), abs=1e-7)
    smoothed = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.2, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.3)) + 0.1 * math.log1p(math.exp(0.3))
    assert smoothed.item() == pytest.approx(expected, abs=1e-7)


def test_ipo_hand_values_and_conventions():
    # paper convention, summed: h = 1.5, tau = 0.5 -> (1.5 - 1)^2 = 0.25
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5], n=[[2.0, 4.0]])
    losses, _ = compute_objective("ipo", x, beta=0.5)
    assert losses.item() == pytest.approx(0.25)
    # TRL convention, per-token means: h = (-0.5 + 1) - (-0.75 + 0.625) = 0.625 -> (0.625 - 1)^2
    losses, _ = compute_objective("ipo_trl", x, beta=0.5)
    assert losses.item() == pytest.approx((0.625 - 1.0) ** 2)
    assert ipo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), tau=0.25).item() == pytest.approx(4.0)


def test_rpo_eta_zero_is_dpo_and_adds_scaled_nll():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-4.0, -9.0], [-6.0, -8.0], [-5.0, -9.5], [-5.5, -7.0]))
    dpo = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert torch.equal(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=0.0), dpo)
    # cumulative: + eta * beta * (-sum log pi(chosen))
    assert torch.allclose(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=2.0), dpo + 2.0 * 0.1 * torch.tensor([4.0, 9.0]))
    # token mean: + coef * (-sum / n)
    n = torch.tensor([2.0, 3.0])
    assert torch.allclose(rpo_mean_loss(pc, pr, rc, rr, n, beta=0.1, nll_coef=0.5), dpo + 0.5 * torch.tensor([2.0, 3.0]))


def test_rpo_sft_gradient_only_touches_chosen():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-6.0], requires_grad=True)
    rc, rr = torch.tensor([-4.0]), torch.tensor([-6.0])
    g_rpo = torch.autograd.grad(rpo_loss(pc, pr, rc, rr, beta=0.1, eta=3.0).sum(), (pc, pr))
    g_dpo = torch.autograd.grad(dpo_loss(pc, pr, rc, rr, beta=0.1).sum(), (pc, pr))
    assert g_rpo[0].item() == pytest.approx(g_dpo[0].item() - 0.3)  # d/dpc of -eta*beta*pc
    assert g_rpo[1].item() == pytest.approx(g_dpo[1].item())


def test_plackett_luce_with_two_responses_equals_dpo():
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(5, 2, generator=g) * 3, torch.randn(5, 2, generator=g) * 3
    ranking = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [1, -1]])  # top-1 of 2 is a full ranking
    num_ranked = torch.tensor([2, 2, 2, 2, 1])
    pl = plackett_luce_loss(pol, ref, ranking, num_ranked, torch.ones(5, 2, dtype=torch.bool), beta=0.3)
    w, l = ranking[:, 0], torch.tensor([1, 0, 1, 0, 0])
    take = lambda t, i: t.gather(1, i[:, None]).squeeze(1)  # noqa: E731
    dpo = dpo_loss(take(pol, w), take(pol, l), take(ref, w), take(ref, l), beta=0.3)
    assert torch.allclose(pl, dpo, atol=1e-6)


def test_plackett_luce_hand_value_full_partial_and_padding():
    r = torch.tensor([[1.0, 2.0, 0.5]])  # beta * (pol - ref) with ref = 0, beta = 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    # ranking 1 > 0 > 2: -[2 - lse(1,2,.5)] - [1 - lse(1,.5)]
    lse = lambda *v: math.log(sum(math.exp(a) for a in v))  # noqa: E731
    full = -(2 - lse(1, 2, 0.5)) - (1 - lse(1, 0.5))
    got = plackett_luce_loss(r, torch.zeros_like(r), torch.tensor([[1, 0, 2]]), torch.tensor([3]), mask, beta=1.0)
    assert got.item() == pytest.approx(full, abs=1e-6)
    top1 = -(2 - lse(1, 2, 0.5))
    got = plackett_luce_loss(r, torch.zeros_like(r), torch.tensor([[1, -1, -1]]), torch.tensor([1]), mask, beta=1.0)
    assert got.item() == pytest.approx(top1, abs=1e-6)
    # a padded 4th response is ignored
    r4 = torch.tensor([[1.0, 2.0, 0.5, 9.0]])
    mask4 = torch.tensor([[True, True, True, False]])
    got = plackett_luce_loss(r4, torch.zeros_like(r4), torch.tensor([[1, 0, 2, -1]]), torch.tensor([3]), mask4, beta=1.0)
    assert got.item() == pytest.approx(full, abs=1e-6)


def test_the_loop_applies_example_weights_to_the_gradient(tmp_path):
    """One train() step equals -lr/eps * sum_i w_i grad l_i / batch_size, with per-example gradients
    computed here from the objective alone. AdamW's first step is m/(sqrt(v) + eps) = g/(|g| + eps);
    with eps = 1e6 >> |g| it is plain gradient descent with rate lr/eps (relative error |g|/eps)."""
    import copy

    from pluralign.data.collate import Collator
    from pluralign.data.records import PreferenceRecord
    from pluralign.data.tokenize import tokenize_records
    from pluralign.logprobs import SequenceLogprobs
    from pluralign.models import load_model, load_tokenizer
    from pluralign.train.config import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, TrainConfig
    from pluralign.train.offline import train

    tok = load_tokenizer("byte")
    model = load_model("tiny", tok, seed=3)
    records = [PreferenceRecord.from_pair("Q: a?", " yes", " no", weight=2.0, preference=0.8),
               PreferenceRecord.from_pair("Q: b?", " cat", " dog", weight=0.0),
               PreferenceRecord.from_pair("Q: c?", " up", " down!", weight=0.5, preference=0.3)]
    lr, eps = 1e3, 1e6  # step = 1e-3 * gradient: large enough to read back from fp32 weights
    cfg = RunConfig(model=ModelConfig(name="tiny"), objective=ObjectiveConfig(name="rpo", beta=0.5, args={"eta": 0.7}),
                    optim=OptimConfig(lr=lr, eps=eps, scheduler="constant", max_grad_norm=None),
                    train=TrainConfig(output_dir=str(tmp_path), batch_size=3, max_steps=1, progress_bar=False))
    before = copy.deepcopy(model)
    after = train(cfg, model=model, tokenizer=tok, records=records).model

    data = tokenize_records(records, tok, max_length=64, max_prompt_length=32)
    scorer = SequenceLogprobs(before)
    expected = [torch.zeros_like(p) for p in before.parameters()]
    unweighted = [torch.zeros_like(p) for p in before.parameters()]
    for i, rec in enumerate(records):
        batch = Collator(tok.pad_token_id, "plain")([data[i]], [i])
        pol, counts = scorer(batch)
        x = PreferenceLogps(pol, pol.detach(), counts, batch.ranking, batch.num_ranked, batch.response_mask, batch.preference)
        losses, _ = compute_objective("rpo", x, beta=0.5, args={"eta": 0.7})
        grads = torch.autograd.grad(losses.sum(), list(before.parameters()), allow_unused=True)
        for acc, plain, g in zip(expected, unweighted, grads):
            if g is not None:
                acc.add_(rec.weight * g / len(records))
                plain.add_(g / len(records))
    moved = [(p0.detach() - p1.detach()) * eps / lr for p0, p1 in zip(before.parameters(), after.parameters())]
    biggest = max(float(e.abs().max()) for e in expected)
    assert biggest > 1e-3  # the step is not trivially zero
    for got, want in zip(moved, expected):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * biggest)
    # and the check can tell: ignoring the weights would give another step
    assert not all(torch.allclose(got, plain, rtol=1e-3, atol=1e-3 * biggest) for got, plain in zip(moved, unweighted))


def test_stats_use_trl_names_and_values():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5])
    _, stats = compute_objective("dpo", x, beta=0.2)
    assert stats["rewards/chosen"].item() == pytest.approx(0.2)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.1)
    assert stats["rewards/margins"].item() == pytest.approx(0.3)
    assert stats["rewards/accuracies"].item() == 1.0
    assert stats["rewards/ranking_accuracy"].item() == 1.0
    assert stats["logps/chosen"].item() == -1.0 and stats["logps/rejected"].item() == -3.0


def test_ranking_accuracy_counts_implied_pairs():
    pol = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    x = PreferenceLogps(pol, torch.zeros_like(pol), torch.ones_like(pol), torch.tensor([[0, 2, 1, 3]]), torch.tensor([4]), torch.ones(1, 4, dtype=torch.bool))
    _, stats = compute_objective("plackett_luce", x, beta=1.0)
    # 6 implied pairs: (0>2) ok, (0>1) ok, (0>3) ok, (2>1) wrong, (2>3) ok, (1>3) ok
    assert stats["rewards/ranking_accuracy"].item() == pytest.approx(5 / 6)


def test_unknown_objective_and_argument_errors_name_them():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5])
    with pytest.raises(ValueError, match="unknown objective 'dpoo'"):
        compute_objective("dpoo", x, beta=0.1)
    with pytest.raises(ValueError, match="etta"):
        compute_objective("rpo", x, beta=0.1, args={"etta": 1.0})
    with pytest.raises(ValueError, match="eta"):
        compute_objective("rpo", x, beta=0.1)


# ---------------------------------------------------------------------------- soft labels
Z = 0.3  # beta h of the hand example below: h = 1.5, beta = 0.2
PAIR = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]))


def _sp(z):  # softplus(-z) = -log sigmoid(z)
    return math.log1p(math.exp(-z))


def test_dpo_soft_label_hand_values():
    p = torch.tensor([0.7])
    got = dpo_loss(*PAIR, beta=0.2, preference=p).item()
    assert got == pytest.approx(0.7 * _sp(Z) + 0.3 * _sp(-Z), rel=1e-6)
    # label smoothing flips the soft label: q = 0.9 * 0.7 + 0.1 * 0.3 = 0.66
    got = dpo_loss(*PAIR, beta=0.2, label_smoothing=0.1, preference=p).item()
    assert got == pytest.approx(0.66 * _sp(Z) + 0.34 * _sp(-Z), rel=1e-6)
    assert dpo_loss(*PAIR, beta=0.2, preference=torch.tensor([1.0])).item() == pytest.approx(_sp(Z), rel=1e-7)


def test_dpo_soft_label_optimum_is_logit_p():
    h = torch.tensor([0.0], requires_grad=True)
    p = torch.tensor([0.8])
    beta = 0.5
    opt = math.log(0.8 / 0.2) / beta
    loss = dpo_loss(h + opt, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=beta, preference=p)
    (g,) = torch.autograd.grad(loss.sum(), h)
    assert abs(g.item()) < 1e-7


def test_ipo_soft_label_target_and_expectation():
    # h = 1.5, tau = 0.5, p = 0.75: (1.5 - 0.5 / 1)^2 = 1
    got = ipo_loss(*PAIR, tau=0.5, preference=torch.tensor([0.75])).item()
    assert got == pytest.approx(1.0, rel=1e-6)
    # = expected hard-label loss p (h - 1/(2 tau))^2 + (1-p) (-h - 1/(2 tau))^2 minus p (1-p) / tau^2
    expectation = 0.75 * (1.5 - 1.0) ** 2 + 0.25 * (-1.5 - 1.0) ** 2
    assert got == pytest.approx(expectation - 0.75 * 0.25 / 0.25, rel=1e-6)
    # p = 1/2 (a tie) pulls h to 0
    assert ipo_loss(*PAIR, tau=0.5, preference=torch.tensor([0.5])).item() == pytest.approx(1.5**2, rel=1e-6)


def test_ipo_trl_soft_label_uses_token_means():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5], n=[[2.0, 4.0]])
    x.preference = torch.tensor([0.75], dtype=torch.float64)
    losses, _ = compute_objective("ipo_trl", x, beta=0.5)
    assert losses.item() == pytest.approx((0.625 - 0.5) ** 2, rel=1e-9)


def test_rpo_soft_label_mixes_both_parts():
    pc, pr, rc, rr = PAIR
    p = torch.tensor([0.7])
    dpo = 0.7 * _sp(Z) + 0.3 * _sp(-Z)
    # NLL part: eta * beta * -(0.7 * -1 + 0.3 * -3) = 2 * 0.2 * 1.6
    assert rpo_loss(pc, pr, rc, rr, beta=0.2, eta=2.0, preference=p).item() == pytest.approx(dpo + 0.64, rel=1e-6)
    n_c, n_r = torch.tensor([2.0]), torch.tensor([3.0])
    got = rpo_mean_loss(pc, pr, rc, rr, n_c, beta=0.2, nll_coef=0.5, preference=p, rejected_num_tokens=n_r).item()
    assert got == pytest.approx(dpo + 0.5 * (0.7 * 0.5 + 0.3 * 1.0), rel=1e-6)


def test_sft_soft_label_is_the_winners_expected_token_mean_nll():
    x = _pairs([-1.0], [-3.0], [-2.0], [-2.5], n=[[2.0, 4.0]])
    x.preference = torch.tensor([0.25], dtype=torch.float64)
    losses, _ = compute_objective("sft", x, beta=0.1)
    assert losses.item() == pytest.approx(0.25 * 0.5 + 0.75 * 0.75, rel=1e-12)


def test_plackett_luce_pair_soft_label_equals_dpo_and_rankings_ignore_it():
    x = _pairs([-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.5, -1.5])
    x.preference = torch.tensor([0.7, 0.2], dtype=torch.float64)
    pl, _ = compute_objective("plackett_luce", x, beta=0.2)
    dpo, _ = compute_objective("dpo", x, beta=0.2)
    assert torch.allclose(pl, dpo, rtol=1e-12)
    # a batch mixing a pair (padded to K = 3) and a ranking: the ranking's loss is its plain PL loss
    pol = torch.tensor([[-1.0, -3.0, 0.0], [-1.0, -2.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ranking = torch.tensor([[0, 1, -1], [2, 0, 1]])
    y = PreferenceLogps(pol, torch.zeros_like(pol), torch.ones_like(pol), ranking, torch.tensor([2, 3]), mask,
                        torch.tensor([0.7, 1.0], dtype=torch.float64))
    got, _ = compute_objective("plackett_luce", y, beta=1.0)
    plain = plackett_luce_loss(pol, torch.zeros_like(pol), ranking, torch.tensor([2, 3]), mask, beta=1.0)
    assert got[1].item() == pytest.approx(plain[1].item(), rel=1e-12)
    assert got[0].item() == pytest.approx(0.7 * _sp(2.0) + 0.3 * _sp(-2.0), rel=1e-9)


def test_preference_one_is_the_hard_label():
    x = _pairs([-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.5, -1.5])
    for name, args in (("dpo", {}), ("ipo", {}), ("rpo", {"eta": 1.0}), ("rpo_mean", {"nll_coef": 0.3}), ("sft", {})):
        hard, _ = compute_objective(name, x, beta=0.2, args=args)
        x.preference = torch.ones(2, dtype=torch.float64)
        soft, _ = compute_objective(name, x, beta=0.2, args=args)
        x.preference = None
        assert torch.allclose(hard, soft, rtol=1e-12), name
