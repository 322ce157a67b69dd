"""Run set-up shared by every training loop: the accelerator, seeds, CPU float mode, the run folder.

    accelerator = make_accelerator(cfg.train)
    out = open_run_folder(cfg.train, accelerator, to_dict(cfg))
    model = build_policy(cfg.model, tokenizer)

The run folder holds one run: a new run refuses a folder that already holds files unless
``train.resume`` (continue it) or ``train.overwrite`` (replace it) says what to do, so a fresh run can
never prune, mix metrics with, or resume from another run's checkpoints.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed

from pluralign.models import enable_activation_checkpointing, load_model, load_tokenizer
from pluralign.train.config import ConfigError, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

# What a run writes into its folder; ``train.overwrite`` removes exactly these.
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "data_report.txt", "tensorboard", "wandb", "wandb_run_id")
PROGRESS_FILES = ("checkpoints", "metrics.jsonl")  # a folder with one of these holds a run that trained


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_ABOVE = 1 << 30


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    By default glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh
    mmap and unmaps it on free. A training step's logits chunks, gradients and long activations are
    that large, so the kernel page-faults and zeroes them again at every step: on SmolLM2-135M, 2
    CPU cores, 0.7-1 GiB of page faults per step (in back-to-back runs the benchmark's longest batch
    took 4.0-4.3 s with this setting against 4.5 s without; the shorter ones moved within noise). With mmap
    off (``M_MMAP_MAX = 0``) and the heap trimmed only when over 1 GiB lies free at its top, freed
    blocks stay in the process and the next step reuses them. Peak memory is the same; the memory
    goes back to the system at exit instead of after every step.

    Process-wide and one-way (``train.reuse_freed_memory=false`` leaves malloc as it is). Returns
    whether the setting took effect: False where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
    except (OSError, AttributeError):
        return False


def cpu_data_parallel() -> bool:
    """True under torchrun/accelerate with several processes and no GPU: accelerate only picks its
    gloo CPU backend when told the run is on CPU, and would otherwise run each process alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def make_accelerator(tcfg: TrainConfig) -> Accelerator:
    """An accelerator for this run (mixed precision, gradient accumulation), seeded, with log output
    of the ``pluralign`` loggers limited to the main process."""
    # Several runs in one process (the demo, notebooks) may differ in mixed precision; the process
    # group (PartialState) is kept, only the per-run accelerator state is reset.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=tcfg.mixed_precision, cpu=cpu_data_parallel(),
                              gradient_accumulation_steps=tcfg.grad_accum)
    set_seed(tcfg.seed)
    if accelerator.device.type == "cpu":
        # Softmax probabilities of tokens being pushed down pass through the denormal range, where
        # x86 CPUs run ~100x slower (measured: 3.6 vs 350 examples/s on the demo's SFT); flushing
        # them to zero changes values below 1e-38 only.
        torch.set_flush_denormal(True)
        if tcfg.reuse_freed_memory:
            reuse_freed_memory()
    # Every process runs the same code; only the main one speaks (warnings and errors still show).
    logging.getLogger("pluralign").setLevel(logging.NOTSET if accelerator.is_main_process else logging.WARNING)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        # accelerate enables FSDP on GPU-type devices only; on CPU an FSDP config runs plain DDP.
        log.warning("an FSDP launch config was given, but accelerate runs this job as %s (no sharding): "
                    "FSDP needs GPUs", accelerator.distributed_type)
    return accelerator


def open_run_folder(tcfg: TrainConfig, accelerator: Accelerator, config: dict) -> Path:
    """Create or check ``train.output_dir``; write ``config.json`` for a new run. Raises
    :class:`ConfigError` for a folder holding an earlier run when neither resume nor overwrite is set."""
    out = Path(tcfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir = {str(out)!r} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [name for name in held if name in RUN_FILES]
    # A run holds something only once it has trained: what an attempt that stopped at a config or
    # data error left (config.json, data_report.txt) is replaced, so fixing the input and rerunning works.
    progress = [name for name in ours if name in PROGRESS_FILES]
    if progress and not (tcfg.resume or tcfg.overwrite):
        raise ConfigError(f"train.output_dir = {str(out)!r} already holds a run ({', '.join(ours)}); set "
                          "train.resume=true to continue it, train.overwrite=true to replace it, or choose another folder")
    accelerator.wait_for_everyone()  # every process has looked before the main one changes anything
    if accelerator.is_main_process:
        if tcfg.overwrite or not progress:
            for name in ours:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.json").exists():
            (out / "config.json").write_text(json.dumps(config, indent=2))
    accelerator.wait_for_everyone()
    return out


def build_tokenizer(mcfg: ModelConfig):
    """The run's tokenizer: ``model.tokenizer`` or the model's own (from its GGUF file when it has one)."""
    gguf = mcfg.tokenizer_gguf_file or (mcfg.gguf_file if mcfg.tokenizer is None else None)
    return load_tokenizer(mcfg.tokenizer or mcfg.name, gguf_file=gguf)


def build_policy(mcfg: ModelConfig, tokenizer, model=None) -> torch.nn.Module:
    """The model to train: ``model`` or the configured one (float32 weights), with activation
    checkpointing and LoRA adapters as configured. A ``model`` that is already a peft model (e.g.
    one holding several adapters, the active one to be trained) is not wrapped again."""
    if model is None:
        model = load_model(mcfg.name, tokenizer, dtype=mcfg.dtype, attn_implementation=mcfg.attn_implementation,
                           seed=mcfg.seed, gguf_file=mcfg.gguf_file)
    if mcfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if mcfg.lora is not None and getattr(model, "peft_config", None) is None:
        from peft import LoraConfig, get_peft_model

        lora = mcfg.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    return model
