"""`pluralign em RECIPE.yaml` end to end on the tiny model: the run directory of the EM contract."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pluralign.cli import main
from pluralign.data.tokenize import tokenize_records
from pluralign.em.estep import example_tensors, record_scores
from pluralign.data.collate import Collator
from pluralign.em.config import EMRunConfig
from pluralign.logprobs import SequenceLogprobs
from pluralign.models import load_tokenizer
from pluralign.train.config import load_config
from pluralign.train.data import load_records

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "em_tiny.yaml"


def test_pluralign_em_writes_the_contracted_run_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    over = ["em.rounds=2", "train.epochs=1", "data.world.num_records=96", f"train.output_dir={out}",
            f"em.features={tmp_path / 'features.jsonl'}"]
    cfg = load_config(RECIPE, over, cls=EMRunConfig)
    records, eval_records = load_records(cfg, load_tokenizer("byte"))  # the run's split: train, held out
    annotators = sorted({r.annotator_id for r in records})
    # k-means features: the group, plus noise (so the iteration-0 clusters are the groups: Cluster-DPO)
    rng = np.random.default_rng(0)
    rows = [{"annotator_id": a, "features": [float(a.startswith("minority")) + 0.05 * rng.standard_normal(), 0.0]}
            for a in annotators]
    (tmp_path / "features.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main(["em", str(RECIPE), *over]) == 0
    assert "done: 2 EM rounds, 2 types" in capsys.readouterr().out

    config = json.loads((out / "config.json").read_text())
    assert {"model", "data", "objective", "train", "em"} <= set(config)
    assert (out / "tokenizer" / "tokenizer_config.json").exists()
    result = json.loads((out / "em_result.json").read_text())
    assert set(result) == {"n_types", "type_weights", "kind", "base", "types", "beta", "rounds", "posteriors"}
    assert result["n_types"] == 2 and result["kind"] == "lora" and result["rounds"] == 2 and result["beta"] == 0.5
    assert sum(result["type_weights"]) == pytest.approx(1.0, abs=1e-12)
    assert result["types"] == ["types/type_0", "types/type_1"] and result["posteriors"] == "posteriors.jsonl"
    assert result["base"] == {"name": "base", "gguf_file": None, "dtype": "float32"}
    for t in result["types"]:
        assert {p.name for p in (out / t).iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    posts = [json.loads(line) for line in (out / "posteriors.jsonl").read_text().splitlines()]
    train_annotators = sorted(p["annotator_id"] for p in posts)
    assert set(train_annotators) <= set(annotators) and len(train_annotators) == len(set(train_annotators))
    for p in posts:
        assert sum(p["posterior"]) == pytest.approx(1.0, abs=1e-9) and p["type"] == int(np.argmax(p["posterior"]))
    assert sum(p["n_records"] for p in posts) == len(records) and len(records) + len(eval_records) == 96
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    for r in rows:
        assert {"type_weights", "log_likelihood", "ari", "eval_type_0/rewards/accuracies",
                "eval_type_1/rewards/ranking_accuracy"} <= set(r)
        assert math.isfinite(r["log_likelihood"]) and r["log_likelihood"] < 0
    assert rows[0]["ari_initial"] == 1.0  # the k-means clusters are the groups
    cluster = json.loads((out / "cluster_dpo" / "em_result.json").read_text())
    assert cluster["rounds"] == 0 and cluster["types"] == ["type_0", "type_1"] and cluster["base"]["name"] == "../base"
    assert (out / "cluster_dpo" / "type_1" / "adapter_model.safetensors").exists()
    # cluster_dpo/ is a run folder of its own: it loads from any working directory, its base is the run's
    # base/ (named relative to cluster_dpo/), its types are trained adapters
    from pluralign.mixture import MixturePolicy
    from pluralign.mixture.em_run import load_em_run

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cluster_run = load_em_run(out / "cluster_dpo")
    assert cluster_run.config == config and cluster_run.result["rounds"] == 0
    cluster_mix, final_mix = cluster_run.mixture(), MixturePolicy.from_em_run(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    with cluster_mix.reference() as a, final_mix.reference() as b:
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    with cluster_mix.type_policy(0) as a:
        trained = a(input_ids=ids).logits
    with cluster_mix.reference() as r:
        assert float((trained - r(input_ids=ids).logits).abs().max().detach()) > 1e-6
    assert main(["aggregate", str(out / "cluster_dpo"), "--hedge-steps", "2000"]) == 0  # MMRA of Cluster-DPO
    assert json.loads((out / "cluster_dpo" / "aggregate" / "regret.json").read_text())["method"] == "world"

    # The saved types load as the contract says and reproduce the posteriors' verdicts: every annotator's
    # votes are likelier under the type it was assigned (where the posterior is decisive).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(out / "tokenizer"))
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    model = PeftModel.from_pretrained(base, out / "types/type_0", adapter_name="type_0")
    model.load_adapter(out / "types/type_1", adapter_name="type_1")
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    by_id = {p["annotator_id"]: p for p in posts}
    train_records = [r for r in records if r.annotator_id in by_id]
    data = tokenize_records(train_records, tok, max_length=64, max_prompt_length=32)
    fields = example_tensors(data)
    batch = Collator(tok.pad_token_id, "plain")(data.examples, list(range(len(data)))).to("cpu")
    scorer = SequenceLogprobs(model, chunk_tokens=None).eval()
    with torch.no_grad(), model.disable_adapter():
        ref, counts = scorer(batch)
    ll = []
    for k in range(2):
        model.set_adapter(f"type_{k}")
        with torch.no_grad():
            ll.append(record_scores("plackett_luce", 0.5, {}, scorer(batch)[0], ref, counts, fields)[0])
    ids = np.array([r.annotator_id for r in train_records])
    for a, p in by_id.items():
        if max(p["posterior"]) > 0.99:
            mine = ll[p["type"]][ids == a].sum()
            other = ll[1 - p["type"]][ids == a].sum()
            assert mine > other, a


def test_pluralign_em_refuses_bad_settings_with_a_clear_error(tmp_path, capsys):
    assert main(["em", str(RECIPE), "em.n_types=0", f"train.output_dir={tmp_path}"]) == 2
    assert "em.n_types = 0; expected an integer >= 1" in capsys.readouterr().err
    assert main(["em", str(RECIPE), "model.lora=null", f"train.output_dir={tmp_path}"]) == 2
    assert "em.kind = 'lora' needs model.lora" in capsys.readouterr().err
    assert main(["em", str(RECIPE), "em.init=kmeans", f"em.features={tmp_path / 'none.jsonl'}",
                 f"train.output_dir={tmp_path / 'r'}"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_full_copies_write_whole_models(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    over = ["em.kind=full", "model.lora=null", "em.rounds=1", "train.epochs=1", "optim.lr=1e-3",
            "data.world.num_records=64", f"train.output_dir={out}"]
    assert main(["em", str(RECIPE), *over]) == 0
    result = json.loads((out / "em_result.json").read_text())
    assert result["kind"] == "full" and result["base"]["name"] == "base"
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    types = [AutoModelForCausalLM.from_pretrained(out / t) for t in result["types"]]
    base_w = dict(base.named_parameters())
    for model in types:  # trained copies: every type moved away from the base
        assert max(float((p.detach() - base_w[n].detach()).abs().max()) for n, p in model.named_parameters()) > 1e-4
