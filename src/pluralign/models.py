"""Loading policy, reference and tokenizer; the offline tiny default model.

Two names are built in code and never touch the network:

* ``tokenizer: byte`` -- a byte-level tokenizer (one token per UTF-8 byte, no merges) wrapped in
  ``transformers.PreTrainedTokenizerFast``, with ``<|endoftext|>`` as EOS, ``<|pad|>`` for padding
  and a small chat template. It encodes any text, so real data (HH-RLHF) works with it too.
* ``model: tiny`` -- a small Llama-architecture causal LM built from a config with random weights
  (seeded). Sizes: ``tiny`` (2 layers, width 64) and ``small`` (4 layers, width 128).

Any other name is passed to ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (a Hub id
or a local folder), so users with Hub access or their own checkpoints load them the usual way.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

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


def load_tokenizer(name: str = BYTE_TOKENIZER) -> PreTrainedTokenizerBase:
    """Load a tokenizer by name; ensures a pad token (falls back to EOS, as TRL does)."""
    if name in TINY_MODELS:  # the offline models pair with the offline tokenizer
        name = BYTE_TOKENIZER
    tok = build_byte_tokenizer() if name == BYTE_TOKENIZER else AutoTokenizer.from_pretrained(name)
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
) -> torch.nn.Module:
    """Load a causal LM: ``tiny`` / ``tiny-small`` are built in code, anything else via from_pretrained."""
    torch_dtype = resolve_dtype(dtype)
    if name in TINY_MODELS:
        model = build_tiny_model(tokenizer, size=TINY_MODELS[name], seed=seed)
        if attn_implementation:
            model.config._attn_implementation = attn_implementation
        return model.to(torch_dtype)
    kwargs = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


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
