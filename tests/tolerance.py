"""Scale-aware float comparisons for tests.

Two computations of the same float32 sum differ by reordering, and the error grows with the magnitude
of what is summed: a fixed `atol` either fails on a machine whose kernels sum in another order
(AVX-512 vs AVX2, another thread count) or is meaningless for small values. These helpers bound the
difference by `rel` times the largest magnitude compared, so one tolerance holds for any scale.
"""

import torch

# float32 sums over a few hundred terms: a few ulps of reordering each, far below any real bug's O(1).
FP32_REL = 1e-5


def max_scaled_diff(actual, expected) -> float:
    """max |actual - expected| / max(|expected|, |actual|, tiny)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    scale = torch.maximum(actual.abs().max(), expected.abs().max()).clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def assert_close_scaled(actual, expected, rel: float = FP32_REL, what: str = "values"):
    assert torch.as_tensor(actual).shape == torch.as_tensor(expected).shape, what
    d = max_scaled_diff(actual, expected)
    assert d <= rel, f"{what}: max |diff| / max |value| = {d:.3g} > {rel:.3g}"
