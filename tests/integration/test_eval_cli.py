"""`pluralign eval` on folders saved by plain transformers: every number recomputed here independently."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pluralign import lab
from pluralign.cli import main
from pluralign.logprobs import score_candidates
from pluralign.models import load_tokenizer
from pluralign.objectives import reference_kl
from pluralign.worlds import evaluate_policy, renormalise, tiny_world


def _save_plain_model(folder, seed):
    tok = load_tokenizer("byte")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, ref = _save_plain_model(root / "model", 1), _save_plain_model(root / "ref", 2)
    world = tiny_world()
    rows = []
    for x, (prompt, cands) in enumerate(zip(world.prompts, world.candidates)):
        rows.append({"prompt": prompt, "chosen": cands[0], "rejected": cands[1], "annotator_id": "majority/a1"})
        rows.append({"prompt": prompt, "chosen": cands[1], "rejected": cands[2], "annotator_id": "minority/a2",
                     "preference": 0.7})
    data = root / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "out"
    assert main(["eval", str(model), "--world", "tiny", "--reference", str(ref), "--data", str(data),
                 "--beta", "0.2", "--out", str(out)]) == 0
    return {"result": json.loads((out / "eval.json").read_text()), "md": (out / "eval.md").read_text(),
            "model": model, "ref": ref, "rows": rows, "world": world}


def _dists(folder, world):
    tok = load_tokenizer(str(folder))
    m = AutoModelForCausalLM.from_pretrained(folder)
    return [renormalise(score_candidates(m, tok, p, c).double().numpy()) for p, c in zip(world.prompts, world.candidates)], m, tok


def test_world_metrics_match_an_independent_computation(evaluated):
    res, world = evaluated["result"], evaluated["world"]
    pi, _, _ = _dists(evaluated["model"], world)
    ref, _, _ = _dists(evaluated["ref"], world)
    for x in range(world.n_prompts):
        got = np.array(res["policy"]["distributions"][x])
        assert np.allclose(got, pi[x], rtol=1e-6, atol=1e-9)
        m = res["policy"]["per_prompt"][x]
        assert m["minority_mass"] == pytest.approx(pi[x][world.minority_responses(x)].sum(), rel=1e-6)
        assert m["kl_to_reference"] == pytest.approx(float(np.sum(pi[x] * np.log(pi[x] / ref[x]))), rel=1e-5)
        assert m["entropy"] == pytest.approx(float(-np.sum(pi[x] * np.log(pi[x]))), rel=1e-6)
        P_min = world.group_preference_matrix(1, x)
        assert m["win_rate"]["minority"] == pytest.approx(float(pi[x] @ P_min @ ref[x]), rel=1e-6)
        assert m["regret"]["majority"] == pytest.approx(float(world.rewards[x][0].max() - world.rewards[x][0] @ pi[x]), rel=1e-6)
        # the lab's optima beside them, with the reference model's candidate distribution as reference
        mu = np.full(3, 1 / 3)
        dpo = lab.dpo_optimum(world.preference_matrix(x), ref[x], mu, 0.2)
        assert np.allclose(res["lab"]["dpo_optimum"]["distributions"][x], dpo, rtol=1e-5, atol=1e-9)
        ipo = lab.ipo_optimum(world.preference_matrix(x), ref[x], mu, 1 / 0.2)
        assert np.allclose(res["lab"]["ipo_optimum"]["distributions"][x], ipo, rtol=1e-5, atol=1e-9)
        assert np.allclose(res["lab"]["pm_target"]["distributions"][x], world.population_target(x))
    assert res["policy"]["mean"]["minority_mass"] == pytest.approx(
        evaluate_policy(world, pi, ref)["mean"]["minority_mass"], rel=1e-6)
    assert f"{res['policy']['mean']['minority_mass']:.4f}" in evaluated["md"]
    assert "lab: dpo optimum" in evaluated["md"]


def test_data_metrics_use_trl_names_and_match_hand_values(evaluated):
    d, rows = evaluated["result"]["data"], evaluated["rows"]
    _, m, tok = _dists(evaluated["model"], evaluated["world"])
    r = AutoModelForCausalLM.from_pretrained(evaluated["ref"])
    beta = 0.2
    margins, kls, acc = [], [], {"majority": [], "minority": []}
    for row in rows:
        pol = score_candidates(m, tok, row["prompt"], [row["chosen"], row["rejected"]]).double()
        ref = score_candidates(r, tok, row["prompt"], [row["chosen"], row["rejected"]]).double()
        margin = beta * float((pol[0] - ref[0]) - (pol[1] - ref[1]))
        margins.append(margin)
        acc[row["annotator_id"].split("/")[0]].append(float(margin > 0))
        a, b = float(pol[0] - pol[1]), float(ref[0] - ref[1])  # Bernoulli KL of the two chosen-vs-rejected odds
        p, q = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-b))
        kls.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
        assert float(reference_kl(pol[None], ref[None], torch.ones(1, 2, dtype=torch.bool))) == pytest.approx(kls[-1], rel=1e-6)
    assert d["eval_rewards/margins"] == pytest.approx(np.mean(margins), rel=1e-4, abs=1e-6)
    assert d["eval_kl/reference"] == pytest.approx(np.mean(kls), rel=1e-4, abs=1e-8)
    for g in ("majority", "minority"):
        assert d[f"eval_rewards/accuracies/{g}"] == pytest.approx(np.mean(acc[g]))
    for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/accuracies",
                "eval_logps/chosen", "eval_logps/rejected", "eval_rewards/ranking_accuracy"):
        assert key in d, key
    assert d["eval_num_examples"] == len(rows)


def test_reference_kl_on_a_world_equals_the_exact_kl_to_reference():
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2, torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    got = reference_kl(pol, ref, mask)
    for b in range(3):
        assert float(got[b]) == pytest.approx(lab.kl(renormalise(pol[b].numpy()), renormalise(ref[b].numpy())), rel=1e-10)
    # padding responses are ignored
    padded = reference_kl(torch.cat([pol, torch.full((3, 1), 5.0, dtype=torch.float64)], 1),
                          torch.cat([ref, torch.zeros(3, 1, dtype=torch.float64)], 1),
                          torch.cat([mask, torch.zeros(3, 1, dtype=torch.bool)], 1))
    assert torch.allclose(padded, got, rtol=1e-12)
    assert torch.allclose(reference_kl(pol, pol, mask), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_eval_resolves_run_folders_and_refuses_data_without_reference(evaluated, tmp_path):
    from pluralign.eval.cli import resolve_model

    run = tmp_path / "run"
    (run / "checkpoints" / "step-3" / "model").mkdir(parents=True)
    (run / "checkpoints" / "step-3" / "model" / "config.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-3\n")
    assert resolve_model(str(run)) == str(run / "checkpoints" / "step-3" / "model")
    assert resolve_model("tiny") == "tiny"
    with pytest.raises(SystemExit, match="needs --reference"):
        main(["eval", str(evaluated["model"]), "--world", "tiny", "--data", "x.jsonl", "--out", str(tmp_path / "o")])
