"""What every contender shares: run settings, thread pinning, turn-taking, peak RSS, the result.

Each contender runs in its own subprocess (so its peak RSS is its own) and writes one JSON result.
Timed steps exclude one-time set-up (imports, model load, tokenization, reference precompute);
the reference precompute time is reported on its own.

The contenders of a workload run in lockstep (:class:`Baton`): the parent lets one process work at
a time -- first each one's set-up, then step 1 of each, step 2 of each, and so on. Only one
contender computes at any moment, and whatever else the machine is doing slows all of them at
nearly the same time, so their ratios stay meaningful on a shared machine.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass, field


@dataclass
class RunSpec:
    """Everything a contender needs; written by the parent as JSON."""

    workload: dict  # _workloads.Workload.to_json()
    model_dir: str  # save_pretrained folder of the shared tiny model
    warmup_steps: int
    timed_steps: int
    passes: int = 2  # times the plan is trained through; each timed batch keeps its fastest pass
    threads: int = 2
    learning_rate: float = 1e-4
    beta: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    pluralign_impl: str = "auto"  # trainer | components | auto (the trainer when the tree has it)
    pluralign_max_row_tokens: int | None = None  # the trainer's data.max_row_tokens (None: its default)
    work_dir: str | None = None  # scratch space for trainer outputs (the parent removes it); None: system temp
    tokenizer: str = "byte"  # pluralign.models.load_tokenizer name every contender uses
    precision: str = "fp32"  # fp32 | bf16 (autocast for every contender; weights stay fp32)

    @classmethod
    def load(cls, path: str) -> "RunSpec":
        with open(path) as handle:
            return cls(**json.load(handle))

    def save(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(asdict(self), handle)


@dataclass
class RunResult:
    contender: str
    version: str
    workload: str
    comparisons_per_step: int
    timed_steps: int
    timed_seconds: float = 0.0  # sum over timed batches of their fastest pass
    first_pass_seconds: float = 0.0  # plain wall time of the first pass's timed steps
    setup_seconds: float = 0.0  # process start to the first training step, precompute included
    precompute_seconds: float = 0.0
    tokens_timed: int = 0  # non-padding input tokens fed to the model in the timed steps
    padded_tokens_timed: int = 0  # the same, padding included
    logit_tokens_timed: int = 0  # non-padding positions whose logits were formed (FLOP count of lm_head)
    attention_pairs_timed: int = 0  # (query, key) pairs the causal attention must score, padding excluded
    peak_rss_mb: float = 0.0
    load_average: list[float] = field(default_factory=list)  # 1-minute load average at the end (machine busy?)
    step_seconds: list[float] = field(default_factory=list)  # every step of every pass
    losses: list[float] = field(default_factory=list)  # every step of every pass, warm-up included
    ref_logps: list[list[float]] = field(default_factory=list)  # per record, per response (pairs: per pair)
    notes: list[str] = field(default_factory=list)

    @property
    def comparisons_per_second(self) -> float:
        return self.comparisons_per_step * self.timed_steps / self.timed_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_timed / self.timed_seconds

    def save(self, path: str) -> None:
        self.peak_rss_mb = peak_rss_mb()
        self.load_average = list(os.getloadavg())
        with open(path, "w") as handle:
            json.dump(asdict(self), handle)


def cpu_settings() -> None:
    """The CPU settings pluralign's run set-up makes, for every contender of a benchmark, so the
    ratios measure the loops, not those settings: denormals flushed, and freed memory kept for reuse
    (``pluralign.train.setup.reuse_freed_memory``)."""
    import torch

    torch.set_flush_denormal(True)
    try:
        from pluralign.train.setup import reuse_freed_memory
    except ImportError:  # a tree from before the setting: none of the contenders gets it
        pass
    else:
        reuse_freed_memory()


def cpu_description() -> dict:
    """The CPU's model name and the flags that decide matmul speed (AVX-512, its bf16 instructions,
    AMX), from /proc/cpuinfo; results from machines with and without AMX differ several-fold in bf16."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    kept = sorted(f for f in set(flags) if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2", "avx512_fp16")))
    return {"cpu_model": model, "cpu_flags": kept}


def pin_threads(threads: int) -> None:
    """Same intra-op thread count for every contender (set before torch does any work), and the same
    :func:`cpu_settings`."""
    import torch

    torch.set_num_threads(threads)
    cpu_settings()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (interop threads can only be set once, before any parallel work)
        pass


def best_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def square_matmul_rate(dtype=None, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size^3 ``torch.mm`` (2 * size^3 FLOPs) in ``dtype`` (default float32), best of
    ``repeats``, at the current torch thread count: the matmul peak the benchmarks compare with."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats)


def causal_attention_pairs(row_lengths) -> int:
    """(query, key) pairs of causal attention over rows of one sequence each, given each row's
    real (non-padding) token count n: n (n + 1) / 2 per row (the count the attention FLOPs follow)."""
    n = row_lengths.long()
    return int((n * (n + 1) // 2).sum())


def shared_layout_attention_pairs(batch) -> int:
    """(query, key) pairs of the prefix-shared attention in a pluralign batch, over the pieces
    ``pluralign.attention.prefix_segments`` finds: a prompt of p tokens attends causally to itself
    (p (p + 1) / 2 pairs) and each of its responses of r tokens to the whole prompt and causally to
    itself (r p + r (r + 1) / 2)."""
    from pluralign.attention import prefix_segments

    pairs = 0
    for prompt, responses in prefix_segments(batch.doc_ids, batch.part_ids).group_sizes():
        pairs += prompt * (prompt + 1) // 2
        pairs += sum(size * prompt + size * (size + 1) // 2 for size in responses)
    return pairs


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fold_step_times(result: RunResult, step_seconds: list[float], warmup: int, steps: int) -> None:
    """Timed seconds = sum over the timed batches (plan positions >= warmup) of each batch's fastest
    pass. A batch slowed in one pass (another process on a shared machine, the allocator's first
    touch of a new shape) is usually not slowed in the other, so the minimum is the least disturbed
    estimate of the contender's own cost. The first pass's plain sum is kept as well."""
    per_pass = warmup + steps
    if len(step_seconds) % per_pass:
        raise RuntimeError(f"{len(step_seconds)} step times do not divide into passes of {per_pass}")
    passes = [step_seconds[k : k + per_pass] for k in range(0, len(step_seconds), per_pass)]
    result.step_seconds = list(step_seconds)
    result.first_pass_seconds = sum(passes[0][warmup:])
    result.timed_seconds = sum(min(p[b] for p in passes) for b in range(warmup, per_pass))


class Baton:
    """The child's side of the turn-taking: ``wait()`` blocks until the parent says go; ``handoff()``
    tells the parent this turn is over, then waits for the next. Both return the time work resumes.
    Without file descriptors (a contender run on its own) both return at once."""

    def __init__(self, fds: str | None = None):
        self.go = self.done = None
        self.started: float | None = None  # when the first turn began: the contender's set-up starts
        if fds:
            go, done = (int(x) for x in fds.split(","))
            self.go = os.fdopen(go, "rb", buffering=0)
            self.done = os.fdopen(done, "wb", buffering=0)

    def wait(self) -> float:
        if self.go is not None and self.go.read(1) != b"g":
            raise RuntimeError("the benchmark parent went away")
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        return now

    def since_start(self) -> float:
        return time.perf_counter() - self.started

    def handoff(self) -> float:
        if self.done is not None:
            self.done.write(b"d")
        return self.wait()


def autocast(precision: str):
    """The autocast context of a contender's forward passes: bf16 on CPU, or nothing for fp32."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


def tokenized_examples(spec: RunSpec, records):
    """(tokenizer, pluralign's TokenizedExamples of ``records``), nothing truncated or dropped, so
    every contender can be fed (or checked against) exactly the ids pluralign trains on."""
    from pluralign.data.tokenize import tokenize_records
    from pluralign.models import load_tokenizer

    tokenizer = load_tokenizer(spec.tokenizer)
    data = tokenize_records(records, tokenizer, max_length=1 << 20, max_prompt_length=(1 << 20) - 1)
    if len(data) != len(records) or data.num_truncated:
        raise RuntimeError(f"tokenization dropped or truncated examples: {data.report()}")
    return tokenizer, data.examples


def tokenized_pairs(spec: RunSpec, pairs: list[dict]):
    """(tokenizer, [(prompt ids, chosen ids + EOS, rejected ids + EOS)]) as pluralign tokenizes them."""
    from pluralign.data.records import PreferenceRecord

    records = [PreferenceRecord.from_pair(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    tokenizer, examples = tokenized_examples(spec, records)
    return tokenizer, [(list(ex.prompt_ids), list(ex.response_ids[0]), list(ex.response_ids[1])) for ex in examples]


def optimizer_step(model, optimizer, loss, max_grad_norm: float) -> None:
    """backward, gradient clipping (when max_grad_norm > 0), AdamW step, gradients cleared."""
    import torch

    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def child_environment(threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        DISABLE_MLFLOW_INTEGRATION="TRUE",
        WANDB_DISABLED="true",
    )
    return env
