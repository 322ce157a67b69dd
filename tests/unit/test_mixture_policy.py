"""MixturePolicy: loading an EM run, routing prompts to types, exact mixture probabilities, save/load."""

import json
import math

import numpy as np
import pytest
import torch
from mixture_runs import build_em_run
from tolerance import assert_close_scaled

from pluralign.eval.world_eval import candidate_distributions
from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.logprobs import score_candidates
from pluralign.mixture import MixtureError, MixturePolicy, conditioned_mixture
from pluralign.models import load_model
from pluralign.rl.scoring import encode_prompt
from pluralign.worlds import tiny_world

PROMPTS = ["Q: Tea or coffee?\nA:", "Q: Cat or dog?\nA:", "Hi", "Tell me a story:", "x", "Say:"]


@pytest.fixture(scope="module", params=["lora", "full"])
def run(request, tmp_path_factory):
    return build_em_run(tmp_path_factory.mktemp(f"em_{request.param}"), kind=request.param, weights=(0.6, 0.4))


@pytest.fixture(scope="module")
def mixture(run):
    return MixturePolicy.from_em_run(run)


def prompt_ids(mix, prompts=PROMPTS):
    return [encode_prompt(mix.tokenizer, p) for p in prompts]


def naive_logprob(module, prompt, completion) -> float:
    """log pi(completion | prompt) from one plain forward over prompt + completion."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logp = module(input_ids=ids).logits[0].float().log_softmax(-1)
    P = len(prompt)
    return float(sum(logp[P - 1 + t, tok] for t, tok in enumerate(completion)))


def test_from_em_run_reads_the_contract(mixture, run):
    result = json.loads((run / "em_result.json").read_text())
    assert mixture.kind == result["kind"] and mixture.type_names == ["type_0", "type_1"]
    np.testing.assert_allclose(mixture.weights, [0.6, 0.4])
    assert mixture.beta == 0.1
    # the type policies differ from each other and from the reference
    ids = torch.tensor([prompt_ids(mixture)[0]])
    logits = []
    for _, module in mixture.type_policies():
        logits.append(module(input_ids=ids).logits.detach())
    with mixture.reference() as ref:
        logits.append(ref(input_ids=ids).logits.detach())
    assert float((logits[0] - logits[1]).abs().max()) > 1e-2
    assert float((logits[0] - logits[2]).abs().max()) > 1e-2


def test_type_draw_proportions(mixture):
    """Binomial test at a fixed seed: count of type 0 within 4 standard deviations of n w_0."""
    n = 4000
    types = mixture.sample_types(n, seed=123)
    assert set(np.unique(types)) == {0, 1}
    sd = math.sqrt(n * 0.6 * 0.4)
    assert abs(int((types == 0).sum()) - n * 0.6) <= 4 * sd
    skewed = mixture.with_weights([0.1, 0.9]).sample_types(n, seed=5)
    assert abs(int((skewed == 0).sum()) - n * 0.1) <= 4 * math.sqrt(n * 0.1 * 0.9)
    assert mixture.with_weights([0.0, 1.0]).sample_types(50, seed=1).tolist() == [1] * 50


def test_generate_routes_each_prompt_to_its_type(mixture):
    params = SamplingParams(max_new_tokens=5, num_completions=2, seed=7)
    ids = prompt_ids(mixture)
    out, types = mixture.generate(ids, params)
    assert types.tolist() == mixture.sample_types(len(ids), 7).tolist()
    assert out.token_ids.shape[0] == len(ids) * 2 and out.prompt_ids == [tuple(p) for p in ids]
    for k, module in mixture.type_policies():
        chosen = np.flatnonzero(types == k)
        if chosen.size == 0:
            continue
        alone = TransformersGenerator(module, mixture.tokenizer).generate(
            [ids[i] for i in chosen], SamplingParams(max_new_tokens=5, num_completions=2, seed=7 + 1 + k))
        rows = [int(i) * 2 + j for i in chosen for j in range(2)]
        assert [out.completion_ids()[r] for r in rows] == alone.completion_ids()
        assert [out.finish_reasons[r] for r in rows] == alone.finish_reasons


def test_sequence_logprob_is_the_weighted_mixture(mixture):
    ids = prompt_ids(mixture)[:3]
    out, _ = mixture.generate(ids, SamplingParams(max_new_tokens=4, num_completions=2, seed=1))
    got = mixture.sequence_logprobs(out)
    completions = out.completion_ids()
    for n, comp in enumerate(completions):
        prompt = ids[n // 2]
        per_type = [naive_logprob(m, prompt, comp) for _, m in mixture.type_policies()]
        want = math.log(0.6 * math.exp(per_type[0]) + 0.4 * math.exp(per_type[1]))
        assert got[n] == pytest.approx(want, rel=1e-5)


def test_candidate_distribution_on_a_world_is_the_mixture_of_the_conditioned_types(mixture):
    """On a candidate set every type is conditioned on it first: sum_j w_j pi_j(.|x, C), not the
    full-text mixture renormalised over C (which differs once the types' masses on C differ)."""
    world = tiny_world()
    dists = candidate_distributions(mixture, mixture.tokenizer, world)
    for x in range(world.n_prompts):
        per_type = [np.exp(score_candidates(m, mixture.tokenizer, world.prompts[x], world.candidates[x]).double().numpy())
                    for _, m in mixture.type_policies()]
        want = 0.6 * per_type[0] / per_type[0].sum() + 0.4 * per_type[1] / per_type[1].sum()
        assert_close_scaled(torch.tensor(dists[x]), torch.tensor(want), rel=1e-6)
        # the full-text mixture's probabilities themselves are still what candidate_logprobs gives
        np.testing.assert_allclose(mixture.candidate_logprobs(world.prompts[x], world.candidates[x]),
                                   np.log(0.6 * per_type[0] + 0.4 * per_type[1]), rtol=1e-6)


def test_conditioned_mixture_by_hand():
    """Type 0 keeps 0.75 of its mass on C, type 1 only 0.004: conditioned first, each counts by its weight
    (0.5 [2/3, 1/3] + 0.5 [1/4, 3/4]); the full-text mixture renormalised over C would give type 0's
    [0.664, 0.336] almost alone."""
    logp = np.log([[0.5, 0.25], [0.001, 0.003]])
    np.testing.assert_allclose(conditioned_mixture(logp, [0.5, 0.5]), [11 / 24, 13 / 24], rtol=1e-12)
    np.testing.assert_allclose(conditioned_mixture(logp, [1.0, 0.0]), [2 / 3, 1 / 3], rtol=1e-12)


def test_save_and_load_round_trip(mixture, tmp_path):
    folder = mixture.with_weights([0.25, 0.75]).save_pretrained(tmp_path / "mix")
    meta = json.loads((folder / "mixture.json").read_text())
    assert meta["kind"] == mixture.kind and meta["weights"] == [0.25, 0.75]
    loaded = MixturePolicy.from_pretrained(folder)
    assert loaded.type_names == mixture.type_names and loaded.kind == mixture.kind
    params = SamplingParams(max_new_tokens=6, num_completions=2, seed=11)
    ids = prompt_ids(mixture, PROMPTS[:4])
    a, ta = mixture.with_weights([0.25, 0.75]).generate(ids, params)
    b, tb = loaded.generate(ids, params)
    assert ta.tolist() == tb.tolist() and torch.equal(a.token_ids, b.token_ids)
    assert_close_scaled(torch.tensor(loaded.sequence_logprobs(a)),
                        torch.tensor(mixture.with_weights([0.25, 0.75]).sequence_logprobs(a)))
    with loaded.reference() as r1, mixture.reference() as r2:
        x = torch.tensor([ids[0]])
        assert_close_scaled(r1(input_ids=x).logits.detach(), r2(input_ids=x).logits.detach())


def test_export_type_is_that_type_alone(mixture, tmp_path):
    folder = mixture.export_type(1, tmp_path / "type1")
    single = load_model(str(folder), mixture.tokenizer).eval()
    world = tiny_world()
    with mixture.type_policy(1) as module:
        want = score_candidates(module, mixture.tokenizer, world.prompts[0], world.candidates[0])
    got = score_candidates(single, mixture.tokenizer, world.prompts[0], world.candidates[0])
    assert_close_scaled(got, want)
    assert not any("lora" in k for k in single.state_dict())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("beta"), r"em_result.json: missing key\(s\) \['beta'\]"),
    (lambda d: d.update(type_weights=[0.5, 0.6]), r"type_weights: expected 2 non-negative numbers summing to 1"),
    (lambda d: d.update(types=["types/type_0"]), r"types: expected 2 folders"),
    (lambda d: d.update(types=["types/type_0", "types/nope"]), r"types/nope has no"),
    (lambda d: d.update(kind="merged"), r"kind: expected one of"),
])
def test_bad_em_run_is_refused_naming_file_and_key(run, tmp_path, edit, message):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("aggregate"))
    result = json.loads((copy / "em_result.json").read_text())
    edit(result)
    (copy / "em_result.json").write_text(json.dumps(result))
    with pytest.raises(MixtureError, match=message):
        MixturePolicy.from_em_run(copy)


def test_weights_are_checked():
    with pytest.raises(MixtureError, match="weights: expected 2 non-negative numbers"):
        MixturePolicy(None, None, ["a", "b"], [1.5, -0.5], kind="full", type_models=[torch.nn.Linear(1, 1)] * 2)
    with pytest.raises(MixtureError, match="kind 'lora': the model holds no adapter named"):
        MixturePolicy(torch.nn.Linear(1, 1), None, ["a"], [1.0], kind="lora")
