"""Rewrites of aten graphs traced by :mod:`pyro_vae.ops.compile`, each keeping the
graph's values to float rounding:

- :func:`log1p_free`: softplus and the Bernoulli log-density without ``log1p``;
- :func:`onednn_matmuls`: float32 CPU matrix products computed by oneDNN
  (:func:`onednn_matmul`) rather than by the BLAS behind ``torch.mm``.

Whether a rewrite is applied to a graph is decided by timing it on the machine at hand
(:mod:`pyro_vae.ops.kernels`), never by a guess about the hardware.
"""

import torch

from .. import _compat

_aten = torch.ops.aten


def log1p_free(graph):
    """Rewrite, in place, the aten graph's ``softplus`` and unweighted, unreduced
    ``binary_cross_entropy_with_logits`` nodes without ``log1p``:

        softplus(x; β, τ) = x                      if βx > τ,
                            L(e^{βx}) / β          otherwise;
        −log Bernoulli(y | logits x) = (1 − y) x − min(x, 0) + L(e^{−|x|}),

    PyTorch's own formulas with log1p(u) computed as L(u) = u if w = 1 else
    log(w) · u / (w − 1), w = 1 + u in floating point (Goldberg's rounding-corrected
    log(1 + u), within a few ulps of log1p(u) in relative terms, for tiny u too), while
    the vectorized ``log1p`` runs several times slower than ``log`` on CPUs. The backward
    nodes (already in the graph, ``softplus_backward`` and the sigmoid of the BCE
    gradient) are unchanged.

    :returns: the number of nodes rewritten.
    """
    g = graph.graph
    done = 0
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.softplus.default:
            x = node.args[0]
            beta = node.args[1] if len(node.args) > 1 else node.kwargs.get("beta", 1)
            threshold = node.args[2] if len(node.args) > 2 else node.kwargs.get("threshold", 20)
            with g.inserting_before(node):
                bx = x if beta == 1 else g.call_function(_aten.mul.Scalar, (x, beta))
                soft = _log1p_exp(g, bx)
                if beta != 1:
                    soft = g.call_function(_aten.div.Scalar, (soft, beta))
                new = g.call_function(_aten.where.self, (g.call_function(_aten.gt.Scalar, (bx, threshold)), x, soft))
        elif node.target is _aten.binary_cross_entropy_with_logits.default:
            x, y = node.args[:2]
            weight, pos_weight, reduction = (
                node.args[i] if len(node.args) > i else node.kwargs.get(k, d)
                for i, k, d in ((2, "weight", None), (3, "pos_weight", None), (4, "reduction", 1))
            )
            if weight is not None or pos_weight is not None or reduction != 0:
                continue
            with g.inserting_before(node):
                linear = g.call_function(
                    _aten.sub.Tensor,
                    (
                        g.call_function(_aten.mul.Tensor, (g.call_function(_aten.rsub.Scalar, (y, 1)), x)),
                        g.call_function(_aten.clamp_max.default, (x, 0)),
                    ),
                )
                minus_abs = g.call_function(_aten.neg.default, (g.call_function(_aten.abs.default, (x,)),))
                new = g.call_function(_aten.add.Tensor, (linear, _log1p_exp(g, minus_abs)))
        else:
            continue
        done += _replace(node, new)
    return _recompiled(graph, done)


def _replace(node, new):
    """Node ``new`` in place of ``node`` for all its users, ``node`` erased; returns 1."""
    node.replace_all_uses_with(new)
    node.graph.erase_node(node)
    return 1


def _recompiled(graph, done):
    """``graph`` checked and its code regenerated if ``done`` nodes were rewritten; returns ``done``."""
    if done:
        graph.graph.lint()
        graph.recompile()
    return done


def _log1p_exp(g, t):
    """Graph nodes for log1p(u), u = e^t, as ``where(w == 1, u, log(w) * (u / (w − 1)))``,
    w = 1 + u. Each use of u and w is a node of its own: inductor merges the copies
    within the kernel that reads them, where one node used thrice would be written to
    memory whole (on CPU it stores a reused exp rather than computing it again)."""

    def u():
        return g.call_function(_aten.exp.default, (t,))

    def w():
        return g.call_function(_aten.add.Scalar, (u(), 1))

    ratio = g.call_function(_aten.div.Tensor, (u(), g.call_function(_aten.sub.Scalar, (w(), 1))))
    corrected = g.call_function(_aten.mul.Tensor, (g.call_function(_aten.log.default, (w(),)), ratio))
    return g.call_function(_aten.where.self, (g.call_function(_aten.eq.Scalar, (w(), 1)), u(), corrected))


@torch.library.custom_op("pyro_vae::onednn_matmul", mutates_args=())
def onednn_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a @ b (+ bias): the float32 matrix product (M, K) · (K, N) → (M, N), contiguous,
    computed by oneDNN (``torch.ops.mkldnn._linear_pointwise(a, bᵀ, bias)``, the kernel of
    ``torch.nn.Linear`` on mkldnn tensors) rather than by the BLAS behind ``torch.mm``.
    An opaque op to inductor, whose own lowering of the oneDNN product takes constant
    weights only."""
    bias = None if bias is None else bias.contiguous()  # the kernel reads the bias as contiguous
    return _compat.linear_pointwise(a, b.t(), bias)


@onednn_matmul.register_fake
def _(a, b, bias):
    return a.new_empty(a.shape[0], b.shape[1])


def onednn_available():
    """Whether this torch build has oneDNN for CPU matrix products, and it is not turned off
    (``torch.backends.mkldnn.flags(enabled=False)``)."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and _compat.has_linear_pointwise()


def onednn_matmuls(graph):
    """Rewrite, in place, the aten graph's float32 CPU ``mm(a, b)`` and ``addmm(bias, a, b)``
    (β = α = 1, bias of shape (N,)) nodes as :func:`onednn_matmul`: the same product
    Σ_k a_ik b_kj (+ bias_j) in float32, summed in another order (so equal to float32
    rounding, not bit for bit). oneDNN picks its kernels by the instructions the CPU
    has; the BLAS torch is built with (MKL) may not use AVX-512 on every x86 CPU, and
    where it does not, oneDNN runs these products about twice as fast (docs/speed.md).
    Other dtypes, devices and empty operands are left as they are.

    :returns: the number of nodes rewritten.
    """
    g = graph.graph
    done = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in (_aten.mm.default, _aten.addmm.default):
            continue
        out = node.meta.get("val")
        if out is None or out.device.type != "cpu" or out.dtype != torch.float32 or out.numel() == 0:
            continue
        if node.target is _aten.addmm.default:
            if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
                continue
            bias, a, b = node.args
            bias_val = bias.meta.get("val") if isinstance(bias, torch.fx.Node) else None
            if bias_val is None or tuple(bias_val.shape) != (out.shape[1],) or bias_val.dtype != torch.float32:
                continue
        else:
            (a, b), bias = node.args, None
        a_val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        if a_val is None or a_val.shape[1] == 0:
            continue  # K = 0: the product is zeros (or the bias), left to aten
        with g.inserting_before(node):
            new = g.call_function(torch.ops.pyro_vae.onednn_matmul.default, (a, b, bias))
        new.meta = dict(node.meta)
        done += _replace(node, new)
    return _recompiled(graph, done)
