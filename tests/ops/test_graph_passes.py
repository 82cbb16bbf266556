"""pyro_vae.ops.graph_passes: the rewrites of traced aten graphs keep their values."""

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.ops.graph_passes import onednn_available, onednn_matmuls

pytestmark = pytest.mark.usefixtures("one_thread")


def test_log1p_free_keeps_softplus_and_the_bernoulli_log_density_to_float32_rounding():
    """The rewritten graph against float64: absolute errors of the order of float32's
    rounding of the values themselves, at the extremes of the logits too."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_vae.ops.graph_passes import log1p_free

    def f(x, y):
        return (
            torch.nn.functional.softplus(x),
            torch.nn.functional.softplus(x, beta=2.0, threshold=5.0),
            dist.Bernoulli(logits=x, validate_args=False).log_prob(y),
        )

    x = torch.cat([torch.linspace(-40, 40, 2001), torch.tensor([-1e-6, 0.0, 1e-6, 19.99, 20.01])])
    y = torch.bernoulli(torch.full_like(x, 0.5), generator=torch.Generator().manual_seed(0))
    graph = make_fx(f)(x, y)
    assert log1p_free(graph) == 3
    assert not any(
        n.target in (torch.ops.aten.softplus.default, torch.ops.aten.binary_cross_entropy_with_logits.default)
        for n in graph.graph.nodes
    )
    got, want = graph(x, y), f(x.double(), y.double())
    assert all(g.dtype == torch.float32 for g in got)
    # softplus: a few float32 ulps in relative terms, tiny values (softplus(-40) = 4e-18) too
    for g, w in zip(got[:2], want[:2]):
        assert ((g.double() - w).abs() <= 5e-7 * w.abs() + 1e-30).all(), ((g.double() - w).abs() / w.abs()).max()
    # the Bernoulli log-density (y − 1) x + min(x, 0) − log1p(e^−|x|) cancels terms of size |x|:
    # a few ulps of |x| (its float64 value is no more accurate than that)
    err = (got[2].double() - want[2]).abs()
    assert (err <= 2.4e-7 * (1 + x.abs().double())).all(), err.max()


def test_log1p_free_keeps_small_scales_small():
    """softplus of very negative inputs, as a positive scale (Pyro's softplus_positive
    transform, Normal(loc, softplus(raw))): a few ulps, not 0 (a Normal of scale 0)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_vae.ops.graph_passes import log1p_free

    x = torch.tensor([-14.0, -18.0, -30.0, -80.0])
    graph = make_fx(torch.nn.functional.softplus)(x)
    log1p_free(graph)
    got, want = graph(x), torch.nn.functional.softplus(x.double())
    assert (got > 0).all()
    torch.testing.assert_close(got.double(), want, rtol=5e-7, atol=0)


def test_onednn_matmuls_rewrites_float32_cpu_products_and_keeps_their_values():
    """mm and addmm (β = α = 1, bias (N,)) of float32 become oneDNN products equal to
    float64's to float32 rounding of a sum of K terms; what oneDNN's op does not
    compute (another β, a bias of another shape, float64) stays aten's."""
    from torch.fx.experimental.proxy_tensor import make_fx

    assert onednn_available()  # the pinned torch has it on x86: the default traced graphs use it

    def f(a, b, bias, bias2d, a64, b64):
        return (
            torch.mm(a, b),
            torch.addmm(bias, a, b),
            torch.mm(a.t().contiguous().t(), b.t().t()),
            torch.addmm(bias2d[0], a, b),
            torch.addmm(bias[:1].expand(23), a, b),  # strided biases
            torch.addmm(bias, a, b, beta=0.5),
            torch.addmm(bias2d, a, b),
            torch.mm(a64, b64),
        )

    g = torch.Generator().manual_seed(0)
    a, b, bias = (torch.randn(37, 300, generator=g), torch.randn(300, 23, generator=g), torch.randn(23, generator=g))
    inputs = (a, b, bias, torch.randn(23, 37, generator=g).t(), a.double(), b.double())
    graph = make_fx(f, tracing_mode="fake")(*inputs)
    assert onednn_matmuls(graph) == 5
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.pyro_vae.onednn_matmul.default) == 5
    assert targets.count(torch.ops.aten.addmm.default) == 2 and targets.count(torch.ops.aten.mm.default) == 1
    got, want = graph(*inputs), f(*(t.double() for t in inputs))
    # |error| ≤ K·u·Σ|a||b| (u = 2⁻²⁴), the bound of any summation order; observed far below
    bound = 300 * 2.0**-24 * (a.abs().double() @ b.abs().double()) + 1e-6
    for got_i, want_i in zip(got[:5], want[:5]):
        assert got_i.dtype == torch.float32 and got_i.is_contiguous()
        assert ((got_i.double() - want_i).abs() <= bound).all()
        assert ((got_i.double() - want_i).abs() <= 0.05 * bound).all()  # within a twentieth of it
    for got_i, want_i in zip(got[5:], want[5:]):
        torch.testing.assert_close(got_i.double(), want_i, rtol=1e-5, atol=1e-4)
