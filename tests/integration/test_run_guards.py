"""Bad values, foreign run folders, non-finite steps, resume mismatches, cache paths and progress
output: each gets a clear error (naming the key, folder or step) or is handled without touching
the weights."""

import io
import json
import logging
import math
import os
import sys
import types

import pytest
import torch

from pluralign.errors import PluralignError
from pluralign.train.config import ConfigError, load_config
from pluralign.train.offline import train


def _cfg(data, out, *extra):
    return load_config(None, [f"data.path={data}", f"train.output_dir={out}", "train.progress_bar=false", "optim.lr=1e-3",
                              "train.batch_size=8", "train.max_steps=2", "data.layout=shared", *extra])


@pytest.mark.parametrize("override,key,expected", [
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.grad_accum=0", "train.grad_accum", ">= 1"),
    ("train.log_every=0", "train.log_every", ">= 1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints", ">= 1"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps", ">= 1"),
    ("data.eval_fraction=1.0", "data.eval_fraction", "[0, 1)"),
    ("data.eval_fraction=-0.1", "data.eval_fraction", "[0, 1)"),
    ("optim.lr=0", "optim.lr", "> 0"),
    ("optim.lr=.nan", "optim.lr", "> 0"),
    ("objective.beta=-1", "objective.beta", "> 0"),
    ("objective.args={eta: -0.5}", "objective.args.eta", ">= 0"),
    ("objective.args={nll_coef: -1}", "objective.args.nll_coef", ">= 0"),
    ("optim.warmup_ratio=1.0", "optim.warmup_ratio", "[0, 1)"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm", "> 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas", "[0, 1)"),
    ("data.max_prompt_length=2000", "data.max_prompt_length", "below data.max_length"),
    ("model.dtype=bfloat16", "model.dtype", "train.mixed_precision=bf16"),
])
def test_out_of_range_values_name_key_and_range(override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value) and expected in str(err.value)


def test_ranges_checked_on_configs_built_in_code(pairs_file, tmp_path):
    from pluralign.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"train.batch_size = 0"):
        TrainConfig(batch_size=0)
    cfg = _cfg(pairs_file, tmp_path / "r")
    cfg.train.grad_accum = 0  # assigned after construction: train() checks again
    with pytest.raises(ConfigError, match=r"train.grad_accum = 0"):
        train(cfg)


def test_pairwise_objective_on_rankings_fails_at_start_up(tmp_path, monkeypatch):
    import pluralign.train.offline as offline

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data check")

    monkeypatch.setattr(offline, "build_policy", no_model)
    cfg = load_config(None, ["data.world={name: tiny, kind: rankings, num_records: 40}", f"train.output_dir={tmp_path / 'r'}",
                             "objective.name=dpo", "train.progress_bar=false"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert "objective.name = 'dpo'" in msg and "plackett_luce" in msg and "with K = " in msg


def test_a_folder_holding_a_run_is_refused_or_replaced(pairs_file, tmp_path):
    out = tmp_path / "run"
    train(_cfg(pairs_file, out, "train.max_steps=4", "train.save_every=2"))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]
    with pytest.raises(ConfigError, match=r"already holds a run .*train.resume=true.*train.overwrite=true"):
        train(_cfg(pairs_file, out, "train.max_steps=2", "train.save_every=1"))
    train(_cfg(pairs_file, out, "train.max_steps=2", "train.save_every=1", "train.keep_checkpoints=1", "train.overwrite=true"))
    from pluralign.train.checkpoint import latest_checkpoint

    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002"]  # its own, kept
    assert latest_checkpoint(out).name == "step-000002"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_with_settings_that_change_the_run_is_refused(pairs_file, tmp_path):
    out = tmp_path / "run"
    train(_cfg(pairs_file, out, "train.save_every=1"))
    with pytest.raises(ConfigError) as err:
        train(_cfg(pairs_file, out, "train.save_every=1", "train.resume=true", "objective.beta=0.5", "train.batch_size=4"))
    assert "objective.beta: 0.1 -> 0.5" in str(err.value) and "train.batch_size: 8 -> 4" in str(err.value)
    state = out / "checkpoints" / "step-000002" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "num_processes": 2}))
    with pytest.raises(ConfigError, match=r"number of processes: 2 -> 1"):
        train(_cfg(pairs_file, out, "train.save_every=1", "train.resume=true"))
    # keys that only change logging or saving may differ
    state.write_text(json.dumps({**json.loads(state.read_text()), "num_processes": 1}))
    train(_cfg(pairs_file, out, "train.save_every=2", "train.resume=true", "train.log_every=2", "train.keep_checkpoints=3"))


def _nan_on(calls: set, model):
    """Make the policy's embeddings NaN on the given training forwards (1-based; eval mode untouched)."""
    count = [0]

    def hook(module, args, out):
        if not module.training:
            return out
        count[0] += 1
        return out * float("nan") if count[0] in calls else out

    model.get_input_embeddings().register_forward_hook(hook)


def test_non_finite_steps_are_skipped_without_touching_the_weights(pairs_file, tmp_path, caplog):
    from pluralign.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny", tokenizer)
    _nan_on({3}, model)
    snapshots = {}

    def snapshot(step, m):
        snapshots[step] = [p.detach().clone() for p in m.parameters()]

    caplog.set_level(logging.WARNING)
    r = train(_cfg(pairs_file, tmp_path / "nan", "train.max_steps=5", "reference.precompute=false"), model=model,
              tokenizer=tokenizer, on_log=snapshot)
    rows = {h["step"]: h for h in r.history}
    assert [rows[s]["skipped_steps"] for s in (1, 2, 3, 4, 5)] == [0, 0, 1, 1, 1]
    assert not math.isfinite(rows[3]["loss"]) and math.isfinite(rows[4]["loss"])
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))  # the NaN step changed nothing
    assert all(torch.isfinite(p).all() for p in snapshots[5])
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[3], snapshots[4]))  # training went on
    assert "step 3 skipped" in caplog.text
    logged = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert logged[3]["step"] == 3 and logged[3]["loss"] is None and logged[3]["skipped_steps"] == 1


def test_non_finite_steps_in_a_row_stop_the_run(pairs_file, tmp_path):
    from pluralign.models import load_model, load_tokenizer
    from pluralign.train.step import NonFiniteError

    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny", tokenizer)
    _nan_on({2, 3, 4, 5}, model)
    with pytest.raises(NonFiniteError, match=r"steps \[2, 3\].*train.max_nonfinite_steps = 2"):
        train(_cfg(pairs_file, tmp_path / "stop", "train.max_steps=6", "train.max_nonfinite_steps=2",
                   "reference.precompute=false"), model=model, tokenizer=tokenizer)
    assert issubclass(NonFiniteError, PluralignError)  # printed as one line by the command line


def test_cache_paths_that_cannot_work_are_clear_errors(pairs_file, tmp_path, monkeypatch):
    import errno

    import pluralign.train.reference as reference

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(PluralignError, match=r"reference.cache_dir .* is a file"):
        train(_cfg(pairs_file, tmp_path / "a", f"reference.cache_dir={not_a_dir}"))
    cache = tmp_path / "cache"
    train(_cfg(pairs_file, tmp_path / "b", f"reference.cache_dir={cache}", "train.max_steps=1"))
    (table,) = cache.glob("*.safetensors")
    table.unlink()
    table.mkdir()
    with pytest.raises(PluralignError, match=r"is a directory"):
        train(_cfg(pairs_file, tmp_path / "c", f"reference.cache_dir={cache}", "train.max_steps=1"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(reference, "save_file", full_disk)
    with pytest.raises(PluralignError, match=r"could not write the reference cache .*No space left on device"):
        train(_cfg(pairs_file, tmp_path / "d", f"reference.cache_dir={tmp_path / 'cache2'}", "train.max_steps=1"))
    assert not list((tmp_path / "cache2").glob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_unreadable_cache_is_a_clear_error(pairs_file, tmp_path):
    cache = tmp_path / "cache"
    train(_cfg(pairs_file, tmp_path / "a", f"reference.cache_dir={cache}", "train.max_steps=1"))
    (table,) = cache.glob("*.safetensors")
    table.chmod(0)
    with pytest.raises(PluralignError, match=r"not readable"):
        train(_cfg(pairs_file, tmp_path / "b", f"reference.cache_dir={cache}", "train.max_steps=1"))


def test_cache_key_includes_the_autocast_mode(pairs_file, tmp_path):
    cache = tmp_path / "cache"
    train(_cfg(pairs_file, tmp_path / "a", f"reference.cache_dir={cache}", "train.max_steps=1"))
    train(_cfg(pairs_file, tmp_path / "b", f"reference.cache_dir={cache}", "train.max_steps=1", "train.mixed_precision=bf16"))
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_wandb_run_id_is_kept_on_resume(pairs_file, tmp_path, monkeypatch):
    inits = []
    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: f"id{len(inits)}")

    class Run:
        def log(self, row, step=None):
            pass

        def finish(self):
            pass

    def init(**kwargs):
        inits.append(kwargs)
        return Run()

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    train(_cfg(pairs_file, out, "train.max_steps=2", "train.save_every=1", "train.report_to=[jsonl, wandb]"))
    train(_cfg(pairs_file, out, "train.max_steps=2", "train.save_every=1", "train.report_to=[jsonl, wandb]", "train.resume=true"))
    assert [i["id"] for i in inits] == ["id0", "id0"] and all(i["resume"] == "allow" for i in inits)


def test_progress_lines_without_a_terminal(caplog):
    from pluralign.train.progress import Progress

    caplog.set_level(logging.INFO, logger="pluralign.train.progress")
    progress = Progress(40, 0, "dpo", stream=io.StringIO())
    assert progress.bar is None and progress.every == 2
    for step in range(1, 41):
        progress.update(step, {"loss": 0.5, "rewards/accuracies": 0.75, "examples_per_second": 12.0})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 20 and lines[-1].startswith("dpo step 40/40  loss 0.5000  accuracy 0.750  12.0 examples/s")
    assert "eta 0:00" in lines[-1]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Progress(5, 0, "dpo", stream=Terminal())
    assert tty.bar is not None
    tty.close()
