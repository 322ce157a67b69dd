"""Tiny EM run directories built by hand, exactly in the layout ``pluralign em`` writes (the contract
in README "Min-max-regret aggregation and mixture policies"): a tiny base model, one peft LoRA adapter
per type with random (seeded, non-zero) weights saved by ``PeftModel.save_pretrained``, or full copies
with seeded perturbations, plus config.json, tokenizer/, em_result.json and posteriors.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pluralign.models import load_model, load_tokenizer

TARGETS = ["q_proj", "v_proj", "o_proj"]


def lora_types(base, n_types: int, seed: int = 0, r: int = 4):
    """A peft model holding adapters type_0..type_{K-1}, each randomly initialised (seed + k)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    model = None
    for k in range(n_types):
        torch.manual_seed(seed + 1000 * (k + 1))
        if model is None:
            model = get_peft_model(base, cfg, adapter_name="type_0")
        else:
            model.add_adapter(f"type_{k}", cfg)
    return model.eval()


def perturbed_copy(model, seed: int, scale: float = 0.05):
    """A full copy of ``model`` with seeded Gaussian noise added to every weight."""
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out.eval()


def build_em_run(run_dir, *, kind: str = "lora", n_types: int = 2, weights=(0.6, 0.4), world: str | None = "tiny",
                 data_path: str | None = None, beta: float = 0.1, seed: int = 0, noise: float = 0.05) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer("byte")
    tokenizer.save_pretrained(run_dir / "tokenizer")
    base = load_model("tiny", tokenizer, seed=seed)
    types = [f"types/type_{k}" for k in range(n_types)]
    base_entry = {"name": "tiny", "gguf_file": None, "dtype": "float32"}
    if kind == "lora":
        model = lora_types(base, n_types, seed)
        for k in range(n_types):
            tmp = run_dir / ".save"
            model.save_pretrained(tmp, selected_adapters=[f"type_{k}"])
            src = tmp / f"type_{k}" if (tmp / f"type_{k}").is_dir() else tmp
            shutil.move(str(src), str(run_dir / types[k]))
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        base.save_pretrained(run_dir / "base")
        base_entry["name"] = "base"
        for k in range(n_types):
            perturbed_copy(base, seed + 1000 * (k + 1), noise).save_pretrained(run_dir / types[k])
    data = {"world": {"name": world, "kind": "rankings", "num_records": 60, "seed": 1}} if world else {"path": data_path}
    config = {"model": {"name": "tiny", "seed": seed, "dtype": "float32"}, "data": data,
              "objective": {"name": "dpo", "beta": beta}, "train": {"output_dir": str(run_dir)},
              "em": {"n_types": n_types, "kind": kind}}
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    result = {"n_types": n_types, "type_weights": list(weights), "kind": kind, "base": base_entry, "types": types,
              "beta": beta, "rounds": 1, "posteriors": "posteriors.jsonl"}
    (run_dir / "em_result.json").write_text(json.dumps(result, indent=1))
    rows = [{"annotator_id": f"g{k}/a0", "posterior": [float(j == k) for j in range(n_types)], "type": k,
             "n_records": 3} for k in range(n_types)]
    (run_dir / "posteriors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "type_weights": list(weights)}) + "\n")
    return run_dir
