"""The likelihoods are Pyro's own distributions, and Pyro's validation applies to them."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import build_vae
from pyro_vae.likelihoods import Bernoulli, Gaussian


def test_bernoulli_is_pyros_bernoulli_made_an_event():
    theta = torch.randn(3, 10)
    p = Bernoulli()(theta)
    assert type(p) is dist.Independent and type(p.base_dist) is dist.Bernoulli
    assert p.event_shape == (10,) and p.batch_shape == (3,)
    x = (torch.rand(3, 10) < 0.4).float()
    expected = (x * theta - torch.nn.functional.softplus(theta)).sum(-1)  # Σ x θ − log(1 + e^θ)
    assert torch.allclose(p.log_prob(x), expected, atol=1e-5)


def test_gaussian_is_pyros_normal_made_an_event():
    p = Gaussian(4, scale=0.5)(torch.zeros(2, 4))
    assert type(p) is dist.Independent and type(p.base_dist) is dist.Normal
    assert torch.allclose(
        p.log_prob(torch.ones(2, 4)), torch.distributions.Normal(0.0, 0.5).log_prob(torch.tensor(1.0)).expand(2) * 4
    )


@pytest.mark.parametrize("bad", [0.5, 2.0])
def test_pyro_validation_rejects_non_binary_data_at_a_bernoulli_site(bad):
    """Item 4: under ``pyro.enable_validation(True)`` a Bernoulli model refuses x = 0.5 or 2."""
    vae = build_vae((1, 2, 3), z_dim=2, hidden_dims=(8,))
    x = torch.zeros(4, 6)
    x[0, 0] = bad
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="support"):
            Trace_ELBO().loss(vae.model, vae.guide, x)
        Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(4, 6))  # binary data pass
    with pyro.validation_enabled(False):  # and switching validation off is the user's choice
        Trace_ELBO().loss(vae.model, vae.guide, x)


def test_guide_and_prior_distributions_validate_their_arguments():
    vae = build_vae((1, 2, 3), z_dim=2, hidden_dims=(8,))
    with pyro.validation_enabled(True):
        q = vae.encode(torch.zeros(3, 6))
        assert q.base_dist._validate_args and vae.prior((3,)).base_dist._validate_args
        with pytest.raises(ValueError):
            q.log_prob(torch.full((3, 2), float("nan")))
