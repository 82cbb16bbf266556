"""Kernels and rewrites of a traced graph chosen by timing them on the machine at hand.

Two choices are made for each graph :mod:`pyro_vae.ops.compile` builds, never by a guess
about the hardware:

- **Matrix products.** A graph's float32 CPU products ``mm(a, b)`` and
  ``addmm(bias, a, b)`` (forward and backward) run on aten's BLAS or on oneDNN
  (:func:`~pyro_vae.ops.graph_passes.onednn_matmul`). For the list of the graph's
  product shapes (M, K, N) :func:`choose_matmul` times both on random operands of those
  shapes, T_kernel = median over ``repeats`` passes of Σ_products t, and takes oneDNN
  only if T_onednn < (1 − :data:`MARGIN`) · T_aten.
- **The log1p-free rewrite** (:func:`~pyro_vae.ops.graph_passes.log1p_free`).
  :func:`choose_rewrite` times the whole graph built both ways (compiled as it will
  run), on the call's own inputs with the random generators forked and the buffers
  restored, interleaved, median of ``repeats`` runs each, and applies the rewrite only
  if it is faster by :data:`MARGIN`.

A near tie goes to the plain graph (aten's products, no rewrite), so that timing noise
rarely flips a choice between two runs on one machine. Each choice is cached for the
process (per shape list, per graph) and listed by :func:`choices` with both timings.
``PYRO_VAE_MATMUL=aten|onednn`` and ``PYRO_VAE_LOG1P_FREE=0|1`` force them without
timing (e.g. to pin a run's kernels across machines).
"""

import os
import statistics
import time

import torch

#: the matrix-product kernels a graph's float32 CPU products can run on
KERNELS = ("aten", "onednn")
#: the relative gain a candidate needs over the plain graph to be chosen
MARGIN = 0.05

_MATMUL = {}
_REWRITE = {}


def product_shapes(graph):
    """``[(M, K, N, has_bias), ...]`` of the float32 CPU ``mm``/``addmm`` nodes of an aten
    graph (as recorded by ``make_fx`` in each node's ``meta["val"]``), in graph order."""
    aten = torch.ops.aten
    shapes = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        out = node.meta.get("val")
        a = node.args[1] if node.target is aten.addmm.default else node.args[0]
        a_val = getattr(a, "meta", {}).get("val")
        if out is None or a_val is None or out.device.type != "cpu" or out.dtype != torch.float32:
            continue
        shapes.append((int(out.shape[0]), int(a_val.shape[1]), int(out.shape[1]), node.target is aten.addmm.default))
    return shapes


def _median_seconds(fns, repeats):
    """Median wall seconds of each of ``fns`` (one warm-up call each), run interleaved."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def time_products(shapes, kernel, repeats=15):
    """Median seconds of one pass over the products ``shapes`` with ``kernel`` ("aten" or "onednn")."""
    from .graph_passes import onednn_matmul

    g = torch.Generator().manual_seed(0)
    operands = [
        (torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(n, generator=g) if bias else None)
        for m, k, n, bias in shapes
    ]

    def once():
        for a, b, bias in operands:
            if kernel == "onednn":
                onednn_matmul(a, b, bias)
            elif bias is None:
                torch.mm(a, b)
            else:
                torch.addmm(bias, a, b)

    return _median_seconds([once], repeats)[0]


def choose_matmul(shapes):
    """ "aten" or "onednn" for a graph of these product shapes: forced by ``PYRO_VAE_MATMUL``,
    "aten" where oneDNN is not available or there is no product, else the faster by
    :func:`time_products` (oneDNN by :data:`MARGIN` at least), cached for the process."""
    from .graph_passes import onednn_available

    forced = os.environ.get("PYRO_VAE_MATMUL")
    if forced:
        if forced not in KERNELS:
            raise ValueError(f"PYRO_VAE_MATMUL must be one of {', '.join(KERNELS)}, got {forced!r}")
        return forced
    if not shapes or not onednn_available():
        return "aten"
    key = tuple(shapes)
    if key not in _MATMUL:
        seconds = {k: time_products(shapes, k) for k in KERNELS}
        kernel = "onednn" if seconds["onednn"] < (1 - MARGIN) * seconds["aten"] else "aten"
        _MATMUL[key] = {"kernel": kernel, "seconds": seconds}
    return _MATMUL[key]["kernel"]


def choose_rewrite(key, plain, rewritten, repeats=7):
    """Whether the rewritten graph is the one to run: forced by ``PYRO_VAE_LOG1P_FREE``
    (``0`` or ``1``), else measured, the rewrite taken only if faster by :data:`MARGIN`;
    cached for the process under ``key``.

    :param key: what identifies the graph (its code and input shapes).
    :param plain: ``plain()`` builds the plain variant and returns one timing run of it
        (a call whose side effects the caller undoes); called only when not cached.
    :param rewritten: the same for the rewritten variant.
    """
    forced = os.environ.get("PYRO_VAE_LOG1P_FREE")
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"PYRO_VAE_LOG1P_FREE must be 0 or 1, got {forced!r}")
        return forced == "1"
    if key not in _REWRITE:
        t_plain, t_rewritten = _median_seconds([plain(), rewritten()], repeats)
        _REWRITE[key] = {
            "rewrite": t_rewritten < (1 - MARGIN) * t_plain,
            "seconds": {"plain": t_plain, "log1p_free": t_rewritten},
        }
    return _REWRITE[key]["rewrite"]


def choices():
    """This process's measured choices: ``{"matmul": {shapes: {"kernel", "seconds"}},
    "log1p_free": {graph key: {"rewrite", "seconds"}}}``."""
    return {
        "matmul": {k: {"kernel": v["kernel"], "seconds": dict(v["seconds"])} for k, v in _MATMUL.items()},
        "log1p_free": {k: {"rewrite": v["rewrite"], "seconds": dict(v["seconds"])} for k, v in _REWRITE.items()},
    }
