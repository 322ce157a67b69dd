"""Example judges on text for ``online.labels = judge`` (``online.judge: module:function``).

A judge is ``f(prompt, a, b) -> Pr(a is preferred to b)`` (a probability, or a bool for a
deterministic judge). These need no model, so recipes and tests run without a labeler to train.
"""

from __future__ import annotations

import math

LENGTH_SCALE = 20.0  # characters: a response 20 characters shorter wins with probability sigmoid(1) = 0.73


def shorter_is_better(prompt: str, a: str, b: str) -> float:
    """Bradley-Terry on brevity: ``sigmoid((len(b) - len(a)) / 20)`` with lengths in characters of
    the stripped texts (a concise-answer preference; it ignores the prompt)."""
    z = (len(b.strip()) - len(a.strip())) / LENGTH_SCALE
    return 0.5 * (1.0 + math.tanh(0.5 * z))  # sigmoid without overflow
