"""One-token decode steps for Llama-shaped transformers models, without transformers' per-call machinery.

    step = LlamaDecodeStep.build(model, cache)  # None: a model or set-up it does not serve
    logits = step(next_ids, positions, mask_4d)  # [n] ids, [n, 1] positions -> [n, V] float logits

A decode step on a small model is dominated by Python and per-op dispatch, not arithmetic: the
model's forward walks keyword handling, output recording, mask building, cache objects and the
attention-interface registry for every token and layer. This step calls the model's own weights
and modules directly and runs, for one new token per row, the same tensor operations in the same
order as the modeling code of Llama, Qwen2 and Mistral (embedding; per layer: RMSNorm, q/k/v
projections, rotary embedding, the cache write, SDPA with the same prepared mask, GQA packed as
transformers packs it, o projection, residual, RMSNorm, SiLU-gated MLP, residual; final RMSNorm,
LM head), so its logits are those the model's forward returns. Keys and values are written in
place into the cache's layers (``layer.update(keys, values)``; the caller hands a cache whose
layers are all preallocated, :func:`pluralign.generation._preallocate`).

It serves only what it reproduces: those three model classes and their own layer, attention, MLP
and norm classes, plain ``nn.Linear`` / ``nn.Embedding`` weights (no LoRA or other wrapped
modules), SiLU, SDPA attention over full-attention layers only, no module hooks, no autocast.
Anything else is answered with None, and the caller
decodes through the model's forward.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

# transformers.models.<family>.modeling_<family> -> the prefix of its class names
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}


def _family_classes():
    """{causal-LM class: (decoder-layer, attention, MLP, RMSNorm classes)} of the families importable here."""
    table = {}
    for family, prefix in FAMILIES.items():
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
        names = ("ForCausalLM", "DecoderLayer", "Attention", "MLP", "RMSNorm")
        classes = [getattr(mod, prefix + n, None) for n in names]
        if all(c is not None for c in classes):
            table[classes[0]] = tuple(classes[1:])
    return table


def _silu_classes() -> tuple:
    """The activation modules whose forward is ``F.silu`` (torch's, and transformers' for ``hidden_act: silu``)."""
    try:
        from transformers.activations import SiLUActivation
    except ImportError:
        return (torch.nn.SiLU,)
    return (torch.nn.SiLU, SiLUActivation)


def _autocast_on(device: torch.device) -> bool:
    """Whether autocast is on for the weights' device (it would change the forward's dtypes)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # an older torch: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _no_hooks(model) -> bool:
    from torch.nn.modules import module as nn_module

    if any(getattr(nn_module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class LlamaDecodeStep:
    """The decode step of one Llama / Qwen2 / Mistral model (see the module docstring)."""

    def __init__(self, model, cache, use_gqa_in_sdpa):
        inner = model.model
        self.embed, self.rotary, self.norm, self.head = inner.embed_tokens, inner.rotary_emb, inner.norm, model.lm_head
        self.layers = list(inner.layers[: model.config.num_hidden_layers])
        self.cache_layers = cache.layers
        attn = self.layers[0].self_attn
        self.head_dim, self.groups, self.scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self.use_gqa_in_sdpa = use_gqa_in_sdpa

    @classmethod
    def build(cls, model, cache) -> "LlamaDecodeStep | None":
        from pluralign.generation import SDPA_IMPLEMENTATIONS

        try:  # transformers' own choice between GQA inside SDPA and packed queries, followed as is
            from transformers.integrations.sdpa_attention import use_gqa_in_sdpa
        except ImportError:
            return None
        classes = _family_classes().get(type(model))
        if classes is None or model.training or _autocast_on(model.lm_head.weight.device):
            return None
        layer_cls, attn_cls, mlp_cls, norm_cls = classes
        config = model.config
        inner = model.model
        layers = list(inner.layers[: config.num_hidden_layers])
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        plain = [m for layer in layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                                  layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                                                  layer.mlp.down_proj)] + [model.lm_head]
        cache_layers = getattr(cache, "layers", None) or []
        served = (
            getattr(config, "_attn_implementation", None) in SDPA_IMPLEMENTATIONS and layer_types == {"full_attention"}
            and getattr(config, "sliding_window", None) is None and getattr(config, "hidden_act", None) == "silu"
            and type(inner.embed_tokens) is torch.nn.Embedding and type(inner.norm) is norm_cls
            and all(type(layer) is layer_cls and type(layer.self_attn) is attn_cls and type(layer.mlp) is mlp_cls
                    and type(layer.input_layernorm) is norm_cls and type(layer.post_attention_layernorm) is norm_cls
                    for layer in layers)
            and all(type(m) is torch.nn.Linear for m in plain)
            and all(type(layer.mlp.act_fn) in _silu_classes() for layer in layers)
            and len(cache_layers) == len(layers)
            and _no_hooks(model)
        )
        return cls(model, cache, use_gqa_in_sdpa) if served else None

    @staticmethod
    def _rms_norm(norm, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * h.to(dtype)

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Float logits [n, V] of the next token after ``ids`` [n] at ``positions`` [n, 1], attending
        over the cache and the new token with ``mask`` ([n, 1, 1, L] additive, or None: no padding)."""
        x = F.embedding(ids[:, None], self.embed.weight)
        cos, sin = self.rotary(x, position_ids=positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        n, d, groups = x.shape[0], self.head_dim, self.groups
        for layer, cache_layer in zip(self.layers, self.cache_layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = self._rms_norm(layer.input_layernorm, x)
            q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(n, 1, -1, d).transpose(1, 2)
            k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(n, 1, -1, d).transpose(1, 2)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(n, 1, -1, d).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            keys, values = cache_layer.update(k, v)
            # grouped-query heads as transformers runs them: GQA inside SDPA, or the queries packed per kv head
            if groups > 1 and self.use_gqa_in_sdpa(mask, keys, values):
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=True)
            else:
                qq = q.reshape(n, q.shape[1] // groups, groups, d) if groups > 1 else q
                o = F.scaled_dot_product_attention(qq, keys, values, attn_mask=mask, scale=self.scaling)
            o = o.reshape(n, -1, 1, d).transpose(1, 2).contiguous().reshape(n, 1, -1).contiguous()
            x = x + F.linear(o, attn.o_proj.weight, attn.o_proj.bias)
            h = self._rms_norm(layer.post_attention_layernorm, x)
            h = F.linear(F.silu(F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias))
                         * F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias), mlp.down_proj.weight, mlp.down_proj.bias)
            x = x + h
        x = self._rms_norm(self.norm, x)
        return F.linear(x, self.head.weight, self.head.bias)[:, -1].float()
