r"""What the evaluation modules share: the check of an integer argument, and the mean of
a sample with the standard error of that mean,

    m = (1/n) Σ_i v_i,    se(m) = sqrt(s² / n),    s² = (Σ_i v_i² − n m²) / (n − 1),

accumulated from the running sums Σ v_i and Σ v_i² so that the values may arrive in
chunks (importance samples drawn a chunk at a time).
"""

import math

import torch


def check_int(name, value, low=1):
    """``value`` if it is an integer (not a bool) ≥ ``low``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        need = "a positive integer" if low == 1 else f"an integer ≥ {low}"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return value


class MeanStderr:
    r"""The mean m and its standard error se(m) = s/√n along dimension 0 of the values
    given (float64, from running sums; se is NaN for n < 2).

    ``MeanStderr(values).floats()`` for one sample ``(n,)``; for samples that arrive in
    chunks, ``acc = MeanStderr()``, ``acc.add(chunk)`` for each ``(c, ...)`` chunk, then
    ``acc.result()``, tensors of shape ``(...)``.
    """

    def __init__(self, values=None):
        self.count, self.total, self.total_sq = 0, 0.0, 0.0
        if values is not None:
            self.add(values)

    def add(self, values):
        """Add the ``values.shape[0]`` values of ``values`` ``(c, ...)``; returns self."""
        values = torch.as_tensor(values).double()
        self.count += values.shape[0]
        self.total = self.total + values.sum(0)
        self.total_sq = self.total_sq + values.pow(2).sum(0)
        return self

    def result(self):
        """``(mean, stderr)``, float64 tensors."""
        n = self.count
        if n == 0:
            raise ValueError("the mean of no values")
        total = torch.as_tensor(self.total, dtype=torch.float64)
        mean = total / n
        if n < 2:
            return mean, torch.full_like(total, math.nan)
        var = ((self.total_sq - n * mean**2) / (n - 1)).clamp(min=0)
        return mean, (var / n).sqrt()

    def floats(self):
        """``(mean, stderr)`` as floats, for a sample of scalars."""
        mean, stderr = self.result()
        return mean.item(), stderr.item()
