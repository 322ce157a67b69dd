"""Free-text responses for the online loop (``online.responses = generate``; paper 4, PAPERS.md §5.3).

Round t draws ``online.responses_per_prompt`` responses per prompt from
``mu_t = lam pi_t + (1 - lam) pi_0``: the :class:`~.samplers.MixtureSampler` decides each draw's
source (the current policy with probability lambda), then every draw from the policy is generated
by the policy as it is at the round's start and every other draw by the frozen initial model
(``online.initial = policy``; with LoRA the policy with its adapters off, else a frozen copy) or
taken uniformly from an offline pool of responses (``online.initial = pool``). The draws are
grouped consecutively, and a text labeler (a judge function on text, or a reward model read as
Bradley-Terry) ranks each group.

A drawn response is kept as its text: the loop trains on the text as the data layer tokenizes it
(EOS closing it), which is what the labeler judged and what offline training on the stored texts
would read. Where that differs from the generated token ids the monitor row counts it: a response
clipped at ``online.max_new_tokens`` gains an EOS it never sampled (``online/clipped_ratio``), and a
decoding that does not re-encode to the generated tokens (bytes that are no valid UTF-8, special
tokens dropped, another split) is trained as its text's tokens (``online/retokenized_fraction``).

Each group becomes one shared-prefix row, responses best first; ``log pi_t`` (the policy at the
round's start, no grad) and ``log pi_ref`` (the frozen initial model) of its responses are scored
once and stored with the texts in the round's file, so a resumed run reads the same numbers. The
monitor follows a fixed probe set (prompts with a few fixed responses): its candidate distribution
per round, and the labeler's probabilities on its responses for the stability criteria.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from pluralign.generation import SamplingParams, TransformersGenerator
from pluralign.online.candidates import CandidateTable, ResponseTable, renormalised
from pluralign.online.problem import draw_text_labels, pair_matrix
from pluralign.online.samplers import FROM_INITIAL, FROM_POLICY, FROM_POOL
from pluralign.online.sources import RoundData, RoundView, mixed_reference, padded
from pluralign.rl.scoring import encode_prompt
from pluralign.train.config import ConfigError


def load_prompt_responses(spec, key: str, min_responses: int) -> list[tuple[str, list[str]]]:
    """``spec``: a JSONL file of ``{"prompt": str, "responses": [str, ...]}`` lines, or the same
    objects as a list; errors name the file (or key), the line or item and the field."""
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{key} = {spec!r}: no such file (expected JSONL lines with prompt and responses)")
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}:{n}", json.loads(line)))
            except ValueError as err:
                raise ConfigError(f"{path}:{n}: not a JSON object ({err})") from None
    else:
        items = [(f"{key}[{i}]", item) for i, item in enumerate(spec)]
    out = []
    for where, item in items:
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ConfigError(f"{where}: expected an object with a string 'prompt'")
        responses = item.get("responses")
        if (not isinstance(responses, list) or len(responses) < min_responses
                or not all(isinstance(r, str) for r in responses)):
            raise ConfigError(f"{where}: 'responses' must be a list of at least {min_responses} strings")
        if min_responses >= 2 and len(set(responses)) != len(responses):
            raise ConfigError(f"{where}: 'responses' must be distinct (the probe renormalises over them)")
        out.append((item["prompt"], list(responses)))
    if not out:
        raise ConfigError(f"{key}: no prompts with responses in {spec!r}")
    return out


def draw_seed(seed: int, r: int, x: int, code: int) -> int:
    """The generator's seed for round r's draws of prompt x from source ``code``."""
    return ((seed * 1_000_003 + r) * 65_537 + x) * 2 + code


class ProbeSet:
    """Fixed prompts and responses the monitor scores every round (candidate tables are exact)."""

    def __init__(self, tokenizer, items: list[tuple[str, list[str]]], max_length: int, max_prompt_length: int,
                 labeler):
        self.prompts = [p for p, _ in items]
        self.responses = [r for _, r in items]
        self.table = CandidateTable(tokenizer, self.prompts, self.responses, max_length, max_prompt_length)
        self.matrices = [pair_matrix(labeler, p, r) for p, r in items]


class FreeTextSource:
    """Generated responses (see the module docstring). ``policy``: the unwrapped policy LM whose
    weights the optimizer updates in place; ``reference``: the frozen initial model as a
    :class:`~pluralign.train.reference.LiveReference`; ``pool[x]``: offline responses of prompt x."""

    def __init__(self, cfg, tokenizer, prompts: list[str], sampler, labeler, policy, reference, probe: ProbeSet,
                 pool: list[list[str]] | None = None):
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, list(prompts)
        self.sampler, self.labeler, self.reference, self.probe, self.pool = sampler, labeler, reference, probe, pool
        self.prompt_ids = [encode_prompt(tokenizer, p)[-cfg.data.max_prompt_length:] for p in self.prompts]
        self.policy = TransformersGenerator(policy, tokenizer, compile=cfg.model.compile)
        self.initial = TransformersGenerator(reference.module.model, tokenizer, compile=cfg.model.compile)
        o = cfg.online
        self.params = dict(max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)

    def _reference_off(self):
        """The initial model: the frozen copy, or the policy with its LoRA adapters disabled."""
        peft = self.reference.peft_policy
        return peft.disable_adapter() if peft is not None else nullcontext()

    def _generate(self, which: str, x: int, n: int, seed: int):
        """(texts, whether each text re-encodes to its generated tokens, whether each was clipped) of n
        completions of prompt x."""
        if n == 0:
            return [], [], []
        gen = self.policy if which == "policy" else self.initial
        with self._reference_off() if which == "initial" else nullcontext():
            out = gen.generate([self.prompt_ids[x]], SamplingParams(num_completions=n, seed=seed, **self.params))
        texts = out.texts(self.tokenizer)
        stopped = [r == "stop" for r in out.finish_reasons]
        same = [self.tokenizer(t, add_special_tokens=False)["input_ids"] == (ids[:-1] if stop else ids)
                for t, ids, stop in zip(texts, out.completion_ids(), stopped)]  # the text's tokens, end aside
        return texts, same, [not stop for stop in stopped]

    def draw(self, r: int, scorer, device) -> RoundData:
        """Generate, label and score round r (depends only on the seed, r and the round's weights)."""
        o, seed = self.cfg.online, self.cfg.train.seed
        rng = np.random.default_rng([seed, r])
        texts, prompts, rankings, sources, same, clipped = [], [], [], [], [], []
        for x in range(len(self.prompts)):
            src = self.sampler.sources(o.responses_per_prompt, rng)
            drawn: list[str] = [""] * src.size
            for code, which in ((FROM_POLICY, "policy"), (FROM_INITIAL, "initial")):
                at = np.flatnonzero(src == code)
                if which == "initial" and o.initial == "pool":
                    got = [self.pool[x][i] for i in rng.integers(0, len(self.pool[x]), size=at.size)]
                else:
                    got, s, c = self._generate(which, x, at.size, draw_seed(seed, r, x, code))
                    same += s
                    clipped += c
                for i, t in zip(at, got):
                    drawn[i] = t
            if o.initial == "pool":
                src = np.where(src == FROM_INITIAL, FROM_POOL, src)
            ranked, _ = draw_text_labels(self.labeler, self.prompts[x], drawn, o.group_size, rng)
            texts.append(drawn)
            prompts.append(np.full(ranked.shape[0], x))
            rankings.append(ranked)
            sources.append(src)
        data = RoundData(r, [], np.concatenate(prompts), np.concatenate(rankings), np.concatenate(sources),
                         texts=texts)
        table = self.table(data)
        data.logp = table.snapshot(scorer, device)
        with self._reference_off():
            data.logp_ref = table.snapshot(self.reference.module, device)
        data.probe_logp = self.probe.table.snapshot(scorer, device)
        lengths = [len(t) for ts in texts for t in ts]
        data.stats = {"online/identical_pairs": float(np.mean([texts[x][g[0]] == texts[x][g[1]]
                                                              for x, g in zip(data.prompts, data.rankings)])),
                      "online/clipped_ratio": float(np.mean(clipped)) if clipped else 0.0,
                      "online/retokenized_fraction": float(1 - np.mean(same)) if same else 0.0,
                      "online/mean_text_length": float(np.mean(lengths))}
        return data

    def table(self, data: RoundData) -> ResponseTable:
        """One row per labelled group, its responses best first."""
        groups = [[data.texts[x][i] for i in g] for x, g in zip(data.prompts, data.rankings)]
        return ResponseTable.from_texts(self.tokenizer, [self.prompts[x] for x in data.prompts], groups,
                                        self.cfg.data.max_prompt_length)

    def final(self, r: int, scorer, device) -> RoundData:
        m = self.cfg.online.group_size
        return RoundData(r, [], np.zeros(0, dtype=np.int64), np.zeros((0, m), dtype=np.int64),
                         np.zeros(0, dtype=np.int64), probe_logp=self.probe.table.snapshot(scorer, device))

    def view(self, data: RoundData, device) -> RoundView:
        ref = padded(mixed_reference(data.logp, data.logp_ref, self.cfg.online.alpha), device)
        n, m = data.rankings.shape
        return RoundView(self.table(data), ref, np.arange(n), np.broadcast_to(np.arange(m), (n, m)))

    def observe(self, data: RoundData) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        """(the probe's candidate distributions, the labeler's matrices on them, True)."""
        return [renormalised(v) for v in data.probe_logp], self.probe.matrices, True
