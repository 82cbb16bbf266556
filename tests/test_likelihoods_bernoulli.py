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
