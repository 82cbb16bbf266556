"""The Bernoulli likelihood's fused log-density (issue #5) equals Pyro's."""

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.likelihoods import Bernoulli, IndependentBernoulli


@pytest.mark.parametrize("value_shape", [(4, 10), (3, 4, 10), (7, 3, 4, 10)])
def test_log_prob_and_gradient_equal_pyros_bernoulli(value_shape):
    theta = (torch.randn(3, 4, 10) * 8).requires_grad_()  # large logits too
    x = (torch.rand(value_shape) < 0.4).float()
    ours = Bernoulli()(theta)
    theirs = dist.Bernoulli(logits=theta).to_event(1)
    assert isinstance(ours, IndependentBernoulli) and ours.event_shape == (10,)
    a, b = ours.log_prob(x), theirs.log_prob(x)
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-6)
    ga, = torch.autograd.grad(a.sum(), theta)
    gb, = torch.autograd.grad(b.sum(), theta)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_expand_keeps_the_fast_class():
    d = Bernoulli()(torch.randn(4, 10))
    e = d.expand((5, 4))
    assert isinstance(e, IndependentBernoulli) and e.batch_shape == (5, 4)
    x = (torch.rand(4, 10) < 0.5).float()
    reference = dist.Bernoulli(logits=d.base_dist.logits).to_event(1).expand((5, 4))
    assert torch.allclose(e.log_prob(x), reference.log_prob(x), atol=1e-5)


def test_second_derivatives_equal_pyros_bernoulli():
    """The fused backward is itself differentiable (create_graph=True), e.g. for a
    Hessian-vector product through the decoder's logits."""
    theta = (torch.randn(3, 4, 10, dtype=torch.double) * 4).requires_grad_()
    x = (torch.rand(4, 10) < 0.4).double()
    probe = torch.randn(3, 4, 10, dtype=torch.double)
    results = []
    for d in (Bernoulli()(theta), dist.Bernoulli(logits=theta).to_event(1)):
        g, = torch.autograd.grad(d.log_prob(x).sum(), theta, create_graph=True)
        hvp, = torch.autograd.grad((g * probe).sum(), theta)
        results.append((g.detach(), hvp))
    (ga, ha), (gb, hb) = results
    assert torch.allclose(ga, gb, atol=1e-10) and torch.allclose(ha, hb, atol=1e-10)
    # the Hessian is diagonal, −σ(θ)(1 − σ(θ)): the check can fail
    s = torch.sigmoid(theta.detach())
    assert torch.allclose(ha, -s * (1 - s) * probe, atol=1e-10)
    assert torch.autograd.gradgradcheck(lambda t: Bernoulli()(t).log_prob(x), (theta,))


def test_gradient_with_respect_to_x_equals_pyros():
    """A value that needs a gradient (relaxed or real-valued x) gets ∂ log p / ∂x = θ."""
    theta = torch.randn(4, 10)
    x = (torch.rand(4, 10) < 0.4).float().requires_grad_()
    gx, = torch.autograd.grad(Bernoulli()(theta).log_prob(x).sum(), x)
    assert torch.allclose(gx, theta, atol=1e-6)


def test_torch_func_transforms_equal_pyros_bernoulli():
    """grad, vmap (over θ and over x), jacrev and forward mode through the fused route."""
    from torch.func import grad, jacrev, jvp, vmap

    theta = torch.randn(3, 4, 10, dtype=torch.double)
    x = (torch.rand(4, 10) < 0.4).double()

    def ours(t, v=x):
        return Bernoulli()(t).log_prob(v).sum()

    def theirs(t, v=x):
        return dist.Bernoulli(logits=t).to_event(1).log_prob(v).sum()

    assert torch.allclose(grad(ours)(theta), grad(theirs)(theta))
    assert torch.allclose(vmap(grad(ours))(theta), vmap(grad(theirs))(theta))
    assert torch.allclose(jacrev(ours)(theta), jacrev(theirs)(theta))
    tangent = torch.randn_like(theta)
    assert torch.allclose(jvp(ours, (theta,), (tangent,))[1], jvp(theirs, (theta,), (tangent,))[1])
    xs = (torch.rand(5, 4, 10) < 0.4).double()  # vmap over x, θ fixed
    g_ours = vmap(grad(ours), in_dims=(None, 0))(theta, xs)
    g_theirs = vmap(grad(theirs), in_dims=(None, 0))(theta, xs)
    assert torch.allclose(g_ours, g_theirs)
    log_px = vmap(lambda v: Bernoulli()(theta).log_prob(v))(xs)  # no gradient asked: the other route
    assert torch.allclose(log_px, dist.Bernoulli(logits=theta).to_event(1).log_prob(xs[:, None]))


def test_boolean_x_trains_as_float_x():
    theta = torch.randn(4, 10, requires_grad=True)
    x = torch.rand(4, 10) < 0.4
    g_bool, = torch.autograd.grad(Bernoulli()(theta).log_prob(x).sum(), theta)
    g_float, = torch.autograd.grad(Bernoulli()(theta).log_prob(x.float()).sum(), theta)
    assert torch.allclose(g_bool, g_float)


def test_forward_mode_tangents_of_theta_and_x_equal_pyros():
    import torch.autograd.forward_ad as fwAD

    theta, x = torch.randn(3, 4, 10, dtype=torch.double), (torch.rand(4, 10) < 0.4).double()
    t_theta, t_x = torch.randn_like(theta), torch.randn_like(x)
    results = []
    for log_prob in (lambda t, v: Bernoulli()(t).log_prob(v),
                     lambda t, v: dist.Bernoulli(logits=t).to_event(1).log_prob(v)):
        with fwAD.dual_level():
            out = log_prob(fwAD.make_dual(theta, t_theta), fwAD.make_dual(x, t_x))
            results.append(fwAD.unpack_dual(out).tangent)
    assert torch.allclose(results[0], results[1])
