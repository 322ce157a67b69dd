"""The training loop end to end on the tiny model: CLI, checkpoints, resume, accumulation, caching."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pluralign.train.config import ConfigError, load_config
from pluralign.train.offline import train
from tolerance import assert_close_scaled

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def _cfg(data, out, *extra):
    return load_config(None, [f"data.path={data}", f"train.output_dir={out}", "train.progress_bar=false",
                              "optim.lr=1e-3", "optim.scheduler=linear", "train.batch_size=8", "train.max_steps=4",
                              "data.layout=shared", *extra])


def _weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_cli_train_end_to_end(pairs_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pluralign.cli", "train", str(ROOT / "recipes" / "dpo_tiny.yaml"),
           "data.world=null", f"data.path={pairs_file}", f"train.output_dir={out}", "train.max_steps=3",
           "train.eval_every=3", "train.save_every=2", "train.progress_bar=false", "train.report_to=[jsonl, tensorboard]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "eval_loss", "rewards/accuracies/maj", "rewards/accuracies/min"):
        assert key in rows[-1], key
    assert rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)  # policy == reference at step 1
    assert (out / "tensorboard").is_dir()
    report = (out / "data_report.txt").read_text()
    assert "records loaded: 48" in report and "0 truncated" in report
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert model.num_parameters() > 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002", "step-000003"]


def test_bad_recipe_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train.batchsize"):
        load_config(None, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"data.layout"):
        load_config(None, ["data.layout=diagonal"])


def test_resume_equals_uninterrupted(pairs_file, tmp_path):
    full = train(_cfg(pairs_file, tmp_path / "full", "train.max_steps=6"))

    class Crash(RuntimeError):
        pass

    def crash_at_5(step, model):
        if step == 5:
            raise Crash()

    cfg = _cfg(pairs_file, tmp_path / "cut", "train.max_steps=6", "train.save_every=3")
    with pytest.raises(Crash):
        train(cfg, on_log=crash_at_5)
    cut = tmp_path / "cut"
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step-000003"
    logged = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1, 2, 3, 4]  # step 0 is the on_log row; step 4 was logged after the checkpoint
    # the weights are stored once: in model/, not again in accelerate's state/
    state = cut / "checkpoints" / "step-000003" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"]
    resumed = train(_cfg(pairs_file, cut, "train.max_steps=6", "train.save_every=3", "train.resume=true"))
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert_close_scaled([h["loss"] for h in resumed.history], [h["loss"] for h in full.history[3:]], what="losses")
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # step 4 once, from the resumed run
    assert_close_scaled([r["learning_rate"] for r in rows], [h["learning_rate"] for h in full.history], rel=1e-12,
                        what="learning rates")
    a = _weights(tmp_path / "full" / "checkpoints" / "step-000006" / "model")
    b = _weights(cut / "checkpoints" / "step-000006" / "model")
    for k in a:
        assert_close_scaled(b[k], a[k], what=k)


def test_gradient_accumulation_equals_larger_batch(pairs_file, tmp_path):
    big = train(_cfg(pairs_file, tmp_path / "big", "train.batch_size=8", "train.grad_accum=1", "train.max_steps=3"))
    acc = train(_cfg(pairs_file, tmp_path / "acc", "train.batch_size=4", "train.grad_accum=2", "train.max_steps=3"))
    for key in ("loss", "grad_norm", "rewards/margins"):
        assert_close_scaled([h[key] for h in acc.history], [h[key] for h in big.history], what=key)
    for (n, p), q in zip(big.model.named_parameters(), acc.model.parameters()):
        assert_close_scaled(q.detach(), p.detach(), what=n)


def test_shared_and_plain_layouts_train_identically(pairs_file, tmp_path):
    shared = train(_cfg(pairs_file, tmp_path / "s", "data.layout=shared", "train.max_steps=3"))
    plain = train(_cfg(pairs_file, tmp_path / "p", "data.layout=plain", "train.max_steps=3"))
    assert_close_scaled([h["loss"] for h in shared.history], [h["loss"] for h in plain.history], what="losses")
    assert shared.history[0]["tokens_per_second"] > 0


def test_reference_cache_reused_rebuilt_and_keyed(pairs_file, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    cache = tmp_path / "cache"
    train(_cfg(pairs_file, tmp_path / "a", f"reference.cache_dir={cache}", "train.max_steps=1"))
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    caplog.clear()
    train(_cfg(pairs_file, tmp_path / "b", f"reference.cache_dir={cache}", "train.max_steps=1"))
    assert "loaded from cache" in caplog.text
    # corrupt it: detected and rebuilt, never silently reused
    files[0].write_bytes(files[0].read_bytes()[:-20] + b"\x00" * 20)
    caplog.clear()
    r = train(_cfg(pairs_file, tmp_path / "c", f"reference.cache_dir={cache}", "train.max_steps=1"))
    assert "rebuilding" in caplog.text and "computed" in caplog.text
    assert r.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    # different truncation -> different data fingerprint -> a second file
    train(_cfg(pairs_file, tmp_path / "d", f"reference.cache_dir={cache}", "train.max_steps=1", "data.max_length=12", "data.max_prompt_length=8"))
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_live_reference_and_lora_reference_is_base(pairs_file, tmp_path):
    live = train(_cfg(pairs_file, tmp_path / "live", "reference.precompute=false", "train.max_steps=2"))
    cached = train(_cfg(pairs_file, tmp_path / "cached", "train.max_steps=2"))
    assert_close_scaled([h["loss"] for h in live.history], [h["loss"] for h in cached.history], what="losses")
    lora = train(_cfg(pairs_file, tmp_path / "lora", "model.lora={r: 4, alpha: 8}", "train.max_steps=2"))
    assert lora.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert lora.history[1]["loss"] < math.log(2)


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF data not present")
def test_real_hh_rlhf_pairs_load_validate_and_train(tmp_path):
    from pluralign.data import validate_file

    report = validate_file(HH)
    assert report.records_loaded == 2312 and report.skipped == 0
    # 8 records and batch 8: every step sees the same examples, so the loss must fall
    r = train(_cfg(HH, tmp_path / "hh", "data.max_records=8", "data.max_length=192", "data.max_prompt_length=128",
                   "model.name=tiny", "train.max_steps=3", "data.layout=auto"))
    assert r.layout == "shared"
    assert r.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert r.history[-1]["loss"] < r.history[0]["loss"]


def test_example_weights_scale_the_loss_and_the_update(pairs_file, tmp_path):
    from pluralign.data import load_preferences

    records = load_preferences(pairs_file).records
    doubled = [type(r)(r.prompt, r.responses, r.ranking, r.annotator_id, 2.0) for r in records]
    # half the examples at weight 0: the step is the one of the other half alone (scaled by its share)
    halved = [type(r)(r.prompt, r.responses, r.ranking, r.annotator_id, float(i % 2)) for i, r in enumerate(records)]
    base = train(_cfg(pairs_file, tmp_path / "w1", "train.max_steps=2", "optim.max_grad_norm=null"), records=records)
    heavy = train(_cfg(pairs_file, tmp_path / "w2", "train.max_steps=2", "optim.max_grad_norm=null"), records=doubled)
    assert base.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert heavy.history[0]["loss"] == pytest.approx(2 * math.log(2), rel=1e-6)
    # the update's gradient doubles (AdamW then normalises it away, so the weights cannot show it)
    assert heavy.history[0]["grad_norm"] == pytest.approx(2 * base.history[0]["grad_norm"], rel=1e-5)
    assert base.history[0]["grad_norm"] > 0
    half = train(_cfg(pairs_file, tmp_path / "w3", "train.max_steps=1", "optim.max_grad_norm=null",
                      "train.batch_size=8", "data.group_by_length=false"), records=halved,
                 order=lambda data, global_batch, seed, group_by_length: list(range(len(data))))
    odd = [r for i, r in enumerate(records) if i % 2]
    alone = train(_cfg(pairs_file, tmp_path / "w4", "train.max_steps=1", "optim.max_grad_norm=null",
                       "train.batch_size=4", "data.group_by_length=false"), records=odd,
                  order=lambda data, global_batch, seed, group_by_length: list(range(len(data))))
    # 8 examples, 4 of weight 1: the gradient is half the 4-example batch's
    assert half.history[0]["grad_norm"] == pytest.approx(alone.history[0]["grad_norm"] / 2, rel=1e-5)


def test_gradient_checkpointing_and_bf16_autocast_track_fp32(pairs_file, tmp_path):
    from pluralign.models import load_model, load_tokenizer

    ref = train(_cfg(pairs_file, tmp_path / "fp32", "train.max_steps=2"))
    ckpt = train(_cfg(pairs_file, tmp_path / "gc", "train.max_steps=2", "model.gradient_checkpointing=true"))
    assert_close_scaled([h["loss"] for h in ckpt.history], [h["loss"] for h in ref.history], what="losses")
    tokenizer = load_tokenizer("tiny")
    seen = []
    model = load_model("tiny", tokenizer)
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    bf16 = train(_cfg(pairs_file, tmp_path / "bf16", "train.max_steps=2", "train.mixed_precision=bf16"),
                 model=model, tokenizer=tokenizer)
    assert torch.bfloat16 in seen  # autocast really ran (a silent fp32 run would pass the loss check below)
    assert next(bf16.model.parameters()).dtype == torch.float32  # float32 master weights
    # policy and cached reference under the same autocast: step 1 is exactly ln 2, as with the live reference
    assert bf16.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    live = train(_cfg(pairs_file, tmp_path / "bf16live", "train.max_steps=2", "train.mixed_precision=bf16",
                      "reference.precompute=false"))
    assert live.history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert bf16.history[1]["loss"] == pytest.approx(live.history[1]["loss"], rel=1e-5)
    # bf16 rounding (8 bits of mantissa) moves the second step's loss by well under 1%
    assert bf16.history[1]["loss"] == pytest.approx(ref.history[1]["loss"], rel=1e-2)
    assert bf16.history[1]["loss"] != ref.history[1]["loss"]


def test_epoch_order_hook_decides_the_batches(pairs_file, tmp_path):
    calls = []

    def reversed_order(data, global_batch, seed, group_by_length):
        calls.append((global_batch, seed))
        return list(range(len(data)))[::-1]

    hooked = train(_cfg(pairs_file, tmp_path / "h", "train.max_steps=8", "train.seed=3"), order=reversed_order)
    assert calls == [(8, 3), (8, 4)]  # one call per epoch (48 examples, batch 8), seed + epoch
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text("".join(reversed(pairs_file.read_text().splitlines(keepends=True))))
    same = train(_cfg(flipped, tmp_path / "f", "train.max_steps=8", "train.seed=3"),
                 order=lambda data, global_batch, seed, group_by_length: list(range(len(data))))
    assert_close_scaled([h["loss"] for h in hooked.history], [h["loss"] for h in same.history], what="losses")
