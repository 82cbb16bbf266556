r"""Subnormal ("denormal") float arithmetic flushed to zero on the CPU, for a scope.

Values below the smallest normal float (``torch.finfo(torch.float32).tiny`` ≈ 1.18e-38) are
computed by a slow path on x86 CPUs. The semi-supervised VAE meets them once its classifier
is confident: q(y|x) for the wrong classes falls below 1e-38, and the enumerated ELBO's
backward multiplies whole matrices by those weights. With the flush on, such operands and
results count as 0; a sum that holds a normal value is unchanged in float32, and Adam's ε
makes a step from a subnormal gradient vanish anyway.

``torch.set_flush_denormal`` sets the mode of the calling thread and has no getter; the mode
in force is read by :func:`flushing` (a subnormal times one is 0 under the flush). A thread
takes its creator's mode when it is created and keeps it, so torch's intra-op worker threads
(``torch.get_num_threads() > 1``) are not flushed by it: with several threads, only the
calling thread's share of each kernel is.
"""

from contextlib import contextmanager

import torch

_SUBNORMAL = 1e-39
_GRAIN = 32768  # elements per task of torch's parallel CPU kernels (at::internal::GRAIN_SIZE)


def flushing():
    """Whether the calling thread flushes subnormal floats to zero now."""
    return (torch.tensor([_SUBNORMAL], dtype=torch.float32) * 1.0).item() == 0.0


@contextmanager
def flush_denormal(enabled=True):
    """Within the block, subnormal floats count as 0 on this thread's CPU arithmetic (where
    ``torch.set_flush_denormal`` is supported; elsewhere, and with ``enabled=False``, nothing
    changes); afterwards the mode is what it was before."""
    before = flushing()
    if not enabled or before:
        yield
        return
    _start_workers()  # in the mode outside the block, which they then keep
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def _start_workers():
    """Start torch's intra-op worker threads now, if a kernel has not yet: one elementwise
    kernel large enough to be split across every thread."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.zeros(threads * _GRAIN).add_(1.0)
