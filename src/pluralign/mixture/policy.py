"""A mixture of per-type policies deployed as one policy (paper 3's MMRA deployment, PAPERS.md §4.5).

    mix = MixturePolicy.from_em_run("runs/em", weights=[0.6, 0.4])
    out, types = mix.generate(prompt_ids, SamplingParams(max_new_tokens=64, seed=0))
    mix.save_pretrained("runs/em/aggregate/mixture"); MixturePolicy.from_pretrained(...)

The deployed policy draws one type j ~ w per prompt (seeded) and answers with pi_j, so its
full-text sequence probability is the weighted mixture

    pi_mix(y | x) = sum_j w_j pi_j(y | x),

which :meth:`MixturePolicy.sequence_logprobs` computes exactly (log-sum-exp over types).

On a candidate set C (a world's prompt), every policy is evaluated conditioned on C, and so is
each type of a mixture: the mixture answers among C with the w-mixture of its types' renormalised
candidate distributions,

    pi_mix(y | x, C) = sum_j w_j pi_j(y | x, C),   pi_j(y | x, C) = pi_j(y | x) / sum_{y' in C} pi_j(y' | x),

(:func:`conditioned_mixture`, :meth:`MixturePolicy.candidate_distribution`). This is the policy
whose regret MMRA's linear program minimises: its reward regret is linear in w. It is not the
full-text mixture renormalised over C, sum_j w_j pi_j(y|x) / sum_j w_j pi_j(C|x), which leans
towards the types that keep more of their mass on C (DPO moves only log-ratios within C, so that
mass drifts freely). ``pluralign eval``, ``pluralign aggregate`` and the mixture demo all use
:func:`conditioned_mixture`.

Types share one base model as LoRA adapters (``kind="lora"``: one peft adapter per type, the
reference = adapters disabled) or are full copies (``kind="full"``: the reference is a separate
base model). The saved folder holds everything:

    mixture.json   {"format", "kind", "weights", "type_names", "types": [folders], "beta", "dtype"}
    tokenizer/     the tokenizer
    base/          the base (SFT) model, without adapters
    types/<name>/  a peft adapter folder (lora) or a full save_pretrained folder (full)

As the initial policy of later training: a mixture is not one set of weights (merging or averaging
the type weights is NOT the mixture), so what training can start from is one type's policy,
written as a plain model folder by :meth:`export_type` (adapters merged) and then given as
``model.name``. Training the mixture as a whole is not supported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pluralign.errors import PluralignError
from pluralign.generation import Completions, SamplingParams, TransformersGenerator
from pluralign.models import load_model, load_tokenizer, unwrap_peft

MIXTURE_FORMAT = "pluralign.mixture/v1"
MIXTURE_FILE = "mixture.json"
KINDS = ("lora", "full")


class MixtureError(PluralignError):
    """A mixture folder, EM run directory or weight vector is not what was expected."""


def check_weights(weights, n_types: int, what: str = "weights") -> np.ndarray:
    """Mixture weights as a float array: ``n_types`` non-negative finite numbers summing to 1 (1e-6)."""
    w = np.asarray(weights, dtype=float)
    if w.shape != (n_types,) or not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-6:
        raise MixtureError(f"{what}: expected {n_types} non-negative numbers summing to 1, got "
                           f"{np.asarray(weights).tolist()}")
    return w / w.sum()


class MixturePolicy:
    """K type policies on one base, with mixture weights w (see the module docstring).

    ``model``: for ``kind="lora"`` a peft model holding one adapter per name in ``type_names``;
    for ``kind="full"`` the base (reference) model, with the K full type models in ``type_models``.
    """

    def __init__(self, model, tokenizer, type_names: Sequence[str], weights, *, kind: str = "lora",
                 type_models: Sequence[torch.nn.Module] | None = None, beta: float | None = None,
                 dtype: str = "float32"):
        if kind not in KINDS:
            raise MixtureError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.type_names = [str(n) for n in type_names]
        if not self.type_names or len(set(self.type_names)) != len(self.type_names):
            raise MixtureError(f"type_names: expected distinct names, got {self.type_names}")
        if kind == "lora":
            missing = [n for n in self.type_names if n not in getattr(model, "peft_config", {})]
            if missing:
                raise MixtureError(f"kind 'lora': the model holds no adapter named {missing}")
            type_models = None
        elif type_models is None or len(type_models) != len(self.type_names):
            raise MixtureError(f"kind 'full': expected {len(self.type_names)} type models")
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.type_models = list(type_models) if type_models is not None else None
        self.weights = check_weights(weights, len(self.type_names))
        self.beta, self.dtype = beta, dtype
        for m in self.modules():
            m.eval()

    # ------------------------------------------------------------------ the K policies and the reference
    @property
    def n_types(self) -> int:
        return len(self.type_names)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model] + (self.type_models or [])

    def to(self, device) -> "MixturePolicy":
        """Move the base, the adapters and any full type copies to ``device`` (in place)."""
        for m in self.modules():
            m.to(device)
        return self

    def with_weights(self, weights) -> "MixturePolicy":
        """The same type policies (shared, not copied) with other mixture weights."""
        return MixturePolicy(self.model, self.tokenizer, self.type_names, weights, kind=self.kind,
                             type_models=self.type_models, beta=self.beta, dtype=self.dtype)

    @contextlib.contextmanager
    def type_policy(self, k: int):
        """pi_k as a plain causal LM module (for a LoRA mixture: the base with adapter k active)."""
        if not 0 <= k < self.n_types:
            raise MixtureError(f"type index: expected 0..{self.n_types - 1}, got {k}")
        if self.kind == "full":
            yield self.type_models[k]
            return
        previous = self.model.active_adapter
        self.model.set_adapter(self.type_names[k])
        try:
            yield unwrap_peft(self.model)  # peft injects the adapters in place: the inner model runs them
        finally:
            self.model.set_adapter(previous)

    @contextlib.contextmanager
    def reference(self):
        """pi_SFT: the base with adapters disabled (lora) or the base model (full)."""
        if self.kind == "full":
            yield self.model
            return
        with self.model.disable_adapter():
            yield unwrap_peft(self.model)

    def type_policies(self):
        """Yields (k, module of pi_k) for every type, each inside its :meth:`type_policy` context."""
        for k in range(self.n_types):
            with self.type_policy(k) as module:
                yield k, module

    # ------------------------------------------------------------------ sampling
    def sample_types(self, n_prompts: int, seed: int | None) -> np.ndarray:
        """One type per prompt, i.i.d. from the weights (numpy generator seeded with ``seed``)."""
        return np.random.default_rng(seed).choice(self.n_types, size=n_prompts, p=self.weights)

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                 batch_size: int | None = None) -> tuple[Completions, np.ndarray]:
        """Draw a type per prompt (seed ``params.seed``), answer each prompt with its type's policy
        (:class:`TransformersGenerator`, seed ``params.seed + 1 + k`` for type k) and return the
        completions in prompt order with the drawn types. The completions' ``logprobs``/``entropy``
        are those of the type that generated them; :meth:`sequence_logprobs` gives the mixture's."""
        prompts = [tuple(int(t) for t in p) for p in prompt_ids]
        types = self.sample_types(len(prompts), params.seed)
        parts = {}
        for k, module in self.type_policies():
            chosen = np.flatnonzero(types == k)
            if chosen.size:
                seed = None if params.seed is None else params.seed + 1 + k
                gen = TransformersGenerator(module, self.tokenizer, batch_size=batch_size)
                parts[k] = (chosen, gen.generate([prompts[i] for i in chosen], dataclasses.replace(params, seed=seed)))
        return _in_prompt_order(prompts, params.num_completions, parts, self.tokenizer.pad_token_id), types

    # ------------------------------------------------------------------ probabilities
    @torch.no_grad()
    def type_sequence_logprobs(self, completions: Completions, batch_prompts: int = 16) -> np.ndarray:
        """[K + 1, N] summed log-probs of every completion: rows 0..K-1 under pi_0..pi_{K-1}, row K
        under the reference, each from one shared-prefix forward per batch of prompts."""
        from pluralign.mixture.scoring import completion_logprobs

        rows = [completion_logprobs(module, completions, self.tokenizer.pad_token_id, batch_prompts)
                for _, module in self.type_policies()]
        with self.reference() as ref:
            rows.append(completion_logprobs(ref, completions, self.tokenizer.pad_token_id, batch_prompts))
        return np.stack(rows)

    def sequence_logprobs(self, completions: Completions) -> np.ndarray:
        """[N] log pi_mix(y|x) = logsumexp_j (log w_j + log pi_j(y|x)) of every completion."""
        return mixture_logprob(self.type_sequence_logprobs(completions)[:-1], self.weights)

    def candidate_type_logprobs(self, prompt: str, candidates: Sequence[str]) -> np.ndarray:
        """[K, C] summed log pi_j(candidate | prompt) (EOS included) for every type j."""
        from pluralign.logprobs import score_candidates

        return np.stack([score_candidates(m, self.tokenizer, prompt, list(candidates)).double().numpy()
                         for _, m in self.type_policies()])

    def candidate_logprobs(self, prompt: str, candidates: Sequence[str]) -> np.ndarray:
        """[C] log pi_mix(candidate | prompt), the full-text mixture's summed sequence log-probs
        (their total is the mixture's mass on the candidates; not its candidate distribution)."""
        return mixture_logprob(self.candidate_type_logprobs(prompt, candidates), self.weights)

    def candidate_distribution(self, prompt: str, candidates: Sequence[str]) -> np.ndarray:
        """[C] sum_j w_j pi_j(candidate | prompt, C): the mixture on a candidate set (module doc)."""
        return conditioned_mixture(self.candidate_type_logprobs(prompt, candidates), self.weights)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the whole mixture (base, types, weights, tokenizer) to ``folder`` (see module doc)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        inner = unwrap_peft(self.model)
        if self.kind == "lora":
            inner.save_pretrained(folder / "base", state_dict=base_state_dict(inner))
            for name in self.type_names:
                save_adapter(self.model, name, folder / "types" / name)
        else:
            inner.save_pretrained(folder / "base")
            for name, m in zip(self.type_names, self.type_models):
                m.save_pretrained(folder / "types" / name)
        meta = {"format": MIXTURE_FORMAT, "kind": self.kind, "weights": self.weights.tolist(),
                "type_names": self.type_names, "types": [f"types/{n}" for n in self.type_names],
                "base": "base", "beta": self.beta, "dtype": self.dtype}
        (folder / MIXTURE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, weights=None) -> "MixturePolicy":
        """Load a folder written by :meth:`save_pretrained` (``weights`` overrides the saved ones)."""
        folder = Path(folder)
        meta = read_json(folder / MIXTURE_FILE, ("kind", "weights", "type_names", "types"))
        tokenizer = load_tokenizer(str(folder / "tokenizer"))
        dtype = meta.get("dtype", "float32")
        base = load_model(str(folder / meta.get("base", "base")), tokenizer, dtype=dtype)
        return assemble(base, tokenizer, meta["kind"], [folder / t for t in meta["types"]], meta["type_names"],
                        meta["weights"] if weights is None else weights, beta=meta.get("beta"), dtype=dtype,
                        where=str(folder / MIXTURE_FILE))

    @classmethod
    def from_em_run(cls, run_dir: str | Path, weights=None) -> "MixturePolicy":
        """The type policies of an EM run directory with ``weights`` (default: the run's type weights)."""
        from pluralign.mixture.em_run import load_em_run

        return load_em_run(run_dir).mixture(weights)

    def export_type(self, k: int, folder: str | Path) -> Path:
        """Write pi_k alone as a plain model folder (a LoRA type's adapter merged into a copy of the
        base) plus the tokenizer: what ``pluralign train model.name=FOLDER`` or ``pluralign eval`` loads."""
        import copy

        folder = Path(folder)
        with self.type_policy(k):
            pass  # checks k
        if self.kind == "full":
            self.type_models[k].save_pretrained(folder)
        else:
            single = copy.deepcopy(self.model)
            single.set_adapter(self.type_names[k])
            single.merge_and_unload(adapter_names=[self.type_names[k]]).save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder


def base_state_dict(inner: torch.nn.Module) -> dict:
    """The base model's own weights from a model with peft LoRA layers injected (they keep the
    wrapped weight under ``.base_layer``; the adapters' tensors are left out)."""
    return {k.replace(".base_layer", ""): v for k, v in inner.state_dict().items() if "lora_" not in k}


def save_adapter(model, name: str, out: Path) -> None:
    """Adapter ``name`` of a peft model as an adapter folder without the adapter-name subfolder
    (the EM run directory's layout): adapter_config.json + adapter_model.safetensors, what
    ``PeftModel.save_pretrained`` writes for it, without the model card it also generates (slow)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.peft_config[name].save_pretrained(out)
    state = get_peft_model_state_dict(model, adapter_name=name)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, out / "adapter_model.safetensors")


def mixture_logprob(type_logprobs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log sum_j w_j exp(l_j) over axis 0 of [K, ...] log-probs (types with w_j = 0 drop out)."""
    from scipy.special import logsumexp

    w = np.asarray(weights, dtype=float)
    logw = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf)
    return logsumexp(np.asarray(type_logprobs, dtype=float) + logw.reshape((-1,) + (1,) * (type_logprobs.ndim - 1)), axis=0)


def conditioned_mixture(type_logprobs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_j w_j renormalise(l_j) of [K, C] candidate log-probs: the w-mixture of the types'
    distributions conditioned on the candidate set (module doc), shape [C]."""
    from pluralign.worlds import renormalise

    per_type = np.stack([renormalise(lp) for lp in np.asarray(type_logprobs, dtype=float)])
    return np.asarray(weights, dtype=float) @ per_type


def read_json(path: Path, required: Sequence[str]) -> dict:
    """A JSON object from ``path`` with the ``required`` keys; errors name the file and the key."""
    if not path.is_file():
        raise MixtureError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MixtureError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise MixtureError(f"{path}: expected a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise MixtureError(f"{path}: missing key(s) {missing}")
    return data


def assemble(base, tokenizer, kind: str, type_dirs: Sequence[Path], type_names: Sequence[str], weights, *,
             beta=None, dtype: str = "float32", where: str = "types") -> MixturePolicy:
    """A MixturePolicy from a loaded base and type folders (peft adapters or full model folders)."""
    if kind not in KINDS:
        raise MixtureError(f"{where}: kind {kind!r}; expected one of {KINDS}")
    if len(type_dirs) != len(type_names) or not type_dirs:
        raise MixtureError(f"{where}: expected one type folder per type name, got {len(type_dirs)} and {len(type_names)}")
    for d in type_dirs:
        marker = "adapter_config.json" if kind == "lora" else "config.json"
        if not (Path(d) / marker).is_file():
            raise MixtureError(f"{where}: type folder {d} has no {marker} (kind {kind!r})")
    weights = check_weights(weights, len(type_names), f"{where}: weights")
    if kind == "full":
        models = [load_model(str(d), tokenizer, dtype=dtype) for d in type_dirs]
        return MixturePolicy(base, tokenizer, type_names, weights, kind="full", type_models=models, beta=beta, dtype=dtype)
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(type_dirs[0]), adapter_name=type_names[0])
    for d, name in zip(type_dirs[1:], type_names[1:]):
        model.load_adapter(str(d), adapter_name=name)
    return MixturePolicy(model, tokenizer, type_names, weights, kind="lora", beta=beta, dtype=dtype)


def _in_prompt_order(prompts, k: int, parts: dict, pad_id: int) -> Completions:
    """Completions of prompt subsets (``{type: (prompt indices, Completions)}``) back in prompt order."""
    T = max(c.token_ids.shape[1] for _, c in parts.values())
    N = len(prompts) * k
    token_ids = torch.full((N, T), pad_id, dtype=torch.long)
    logprobs, entropy = torch.zeros(N, T), torch.zeros(N, T)
    mask = torch.zeros(N, T, dtype=torch.bool)
    reasons = [""] * N
    for chosen, c in parts.values():
        rows = (torch.as_tensor(chosen)[:, None] * k + torch.arange(k)[None]).reshape(-1)
        width = c.token_ids.shape[1]
        token_ids[rows, :width], logprobs[rows, :width] = c.token_ids, c.logprobs
        entropy[rows, :width], mask[rows, :width] = c.entropy, c.mask
        for r, reason in zip(rows.tolist(), c.finish_reasons):
            reasons[r] = reason
    return Completions(prompts, k, token_ids, logprobs, entropy, mask, reasons)
