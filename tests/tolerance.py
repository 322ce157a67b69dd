"""Scale-aware float comparisons for tests.

Two computations of the same float32 sum differ by reordering, and the error grows with the magnitude
of what is summed: a fixed `atol` either fails on a machine whose kernels sum in another order
(AVX-512 vs AVX2, another thread count) or is meaningless for small values. These helpers bound the
difference by `rel` times the largest magnitude compared, so one tolerance holds for any scale.
"""

import torch

# float32 sums over a few hundred terms: a few ulps of reordering each, far below any real bug's O(1).
FP32_REL = 1e-5


def max_scaled_diff(actual, expected, scale: float | None = None) -> float:
    """max |actual - expected| / max(|expected|, |actual|, tiny), or / ``scale`` where given: the
    magnitude of the terms a difference was formed from (its rounding error follows theirs, not its own)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    if scale is None:
        scale = torch.maximum(actual.abs().max(), expected.abs().max())
    return float((actual - expected).abs().max() / max(float(scale), 1e-30))


def assert_close_scaled(actual, expected, rel: float = FP32_REL, what: str = "values", scale: float | None = None):
    assert torch.as_tensor(actual).shape == torch.as_tensor(expected).shape, what
    d = max_scaled_diff(actual, expected, scale)
    assert d <= rel, f"{what}: max |diff| / {'scale' if scale is not None else 'max |value|'} = {d:.3g} > {rel:.3g}"
