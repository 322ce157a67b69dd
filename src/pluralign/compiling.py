"""``model.compile``: torch.compile for the two hot paths every loop shares, with an eager fallback.

    step = CompiledOrEager(fn, "the decode step")   # compiled on first call, dynamic shapes
    out = step(*args)                               # fn's result (within rounding)

What is compiled: the decoder forward of :class:`pluralign.logprobs.SequenceLogprobs` (log-prob
scoring, forward and backward, for batches that do not take the prefix-shared kernel) and the
one-token decode step of :class:`pluralign.generation.TransformersGenerator` (Llama-shaped models,
:class:`pluralign.llama_decode.LlamaDecodeStep`). Both have shapes that change every call
(sequence lengths, rows leaving a batch, a growing KV cache), so they are compiled with
``dynamic=True``: one graph per mode (gradients on or off, train or eval), not one per shape.

Why: on small models a step is dominated by per-op overhead, which fused kernels remove (on the
tiny RL benchmark about a fifth of the step; ``bench/bench_rl_vs_trl.py`` reports it as its own
contender). The price is the first calls: each graph compiles once per process, tens of seconds on
2 CPU cores, which a short run does not earn back. Results equal the eager ones up to float
rounding (fused kernels reduce in a different order), not bit for bit.

If compiling fails (no C++ compiler for inductor on CPU, an unsupported op), the call is re-run
eagerly, a warning says why, and the wrapper stays eager; an error that the eager call raises too
is the caller's error and propagates.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


class CompiledOrEager:
    """``fn`` under ``torch.compile(dynamic=True)``, falling back to ``fn`` itself if compiling fails."""

    def __init__(self, fn: Callable, what: str):
        self.eager, self.what = fn, what
        self.compiled = torch.compile(fn, dynamic=True)
        self.failed: str | None = None  # why compiling failed, once it did

    def __call__(self, *args, **kwargs):
        if self.failed is not None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-run eagerly: an error of the call itself raises again there
            out = self.eager(*args, **kwargs)
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("model.compile: compiling %s failed (%s); running it eagerly from now on", self.what, self.failed)
            return out
