"""The K type policies of EM-DPO on one causal LM: LoRA adapters on a shared base, or full copies.

``LoraTypes`` (default): one peft adapter ``type_k`` per type on one base model. The M-step of type
k trains with ``set_adapter("type_k")`` active (only its parameters require grad; its own optimizer
is built by the M-step run); the reference of every type is the base with adapters disabled, so
the base weights are held once. ``FullTypes``: one deep copy of the base per type (K + 1 models);
the reference is the base copy.

Both re-initialise a type to its initial state (``reset``): an adapter to its own seeded LoRA
initialisation (B = 0, so the policy equals the base), a copy to the base weights.
"""

from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch


def type_name(k: int) -> str:
    return f"type_{k}"


class LoraTypes:
    kind = "lora"

    def __init__(self, base: torch.nn.Module, lora_cfg, n_types: int, seed: int = 0):
        from peft import LoraConfig, get_peft_model

        def config():
            return LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                              target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")

        self.n_types = n_types
        with torch.random.fork_rng(devices=[]):
            for k in range(n_types):
                # Every type starts from the same adapter, so types differ only by their responsibilities.
                torch.manual_seed(seed)
                if k == 0:
                    self.model = get_peft_model(base, config(), adapter_name=type_name(0))
                else:
                    self.model.add_adapter(type_name(k), config())
        self.initial = [self._adapter_state(k) for k in range(n_types)]

    def _adapter_state(self, k: int) -> dict[str, torch.Tensor]:
        tag = f".{type_name(k)}."
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if tag in n}

    def policy(self, k: int) -> torch.nn.Module:
        """The model with type k's adapter active (and trainable)."""
        self.model.set_adapter(type_name(k))
        return self.model

    def reference(self):
        """(module, context) computing the reference: the shared base, adapters disabled."""
        return self.model, self.model.disable_adapter()

    @torch.no_grad()
    def reset(self, k: int) -> None:
        params = dict(self.model.named_parameters())
        for name, value in self.initial[k].items():
            params[name].copy_(value)

    def save(self, k: int, path: Path) -> None:
        """A peft adapter folder (adapter_config.json + adapter_model.safetensors) without the
        adapter-name subfolder (``pluralign.mixture.policy.save_adapter``), written next to ``path``
        and then moved there, so a crash leaves the old folder or the new one."""
        from pluralign.mixture.policy import save_adapter

        path = Path(path)
        tmp = path.with_name(path.name + ".saving")
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(self.model, type_name(k), tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)

    @torch.no_grad()
    def load(self, k: int, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(Path(path) / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.model, state, adapter_name=type_name(k))
        missing = [n for n in getattr(result, "unexpected_keys", []) if type_name(k) in n]
        if missing:
            raise RuntimeError(f"{path}: adapter tensors {missing[:3]} do not fit the model")


class FullTypes:
    kind = "full"

    def __init__(self, base: torch.nn.Module, n_types: int):
        self.base = base.requires_grad_(False)
        self.models = [copy.deepcopy(base).requires_grad_(True) for _ in range(n_types)]
        self.n_types = n_types

    def policy(self, k: int) -> torch.nn.Module:
        return self.models[k]

    def reference(self):
        return self.base, nullcontext()

    @torch.no_grad()
    def reset(self, k: int) -> None:
        self.models[k].load_state_dict(self.base.state_dict())

    def save(self, k: int, path: Path) -> None:
        self.models[k].save_pretrained(str(path))

    def load(self, k: int, path: Path) -> None:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=next(self.models[k].parameters()).dtype)
        self.models[k].load_state_dict(loaded.state_dict())


@contextmanager
def evaluating(module: torch.nn.Module):
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
