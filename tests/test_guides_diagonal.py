"""The diagonal family builds q(z|x) = N(μ, diag exp(log σ²)) at the VAE's site z.

For a fixed encoder output (μ, log σ²) the guide's site distribution, taken from
``pyro.poutine.trace`` of ``VAE.guide``, must be ``Normal(μ, exp(½ log σ²)).to_event(1)``:
loc and scale exactly, batch shape (B,), event shape (d,), and ``log_prob`` equal to the
closed form −½ Σ_j [(z_j − μ_j)² / σ_j² + log σ_j² + log 2π]; the sample is the
reparameterized z = μ + σ ε, so ∂z/∂μ = 1 and ∂z/∂(log σ²) = ½ (z − μ)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae.guides import DiagonalNormal, NonReparameterizedNormal, guide_family
from pyro_vae.models import VAE
from pyro_vae.networks import MLPDecoder

B, D, X_DIM = 5, 3, 6


class FixedEncoder(nn.Module):
    """x -> (μ, log σ²), fixed tables (parameters, so gradients can be checked), one row per
    data point of the batch; ``x`` only sets the batch size."""

    def __init__(self, loc, log_var):
        super().__init__()
        self.loc = nn.Parameter(loc.clone())
        self.log_var = nn.Parameter(log_var.clone())
        self.x_dim = X_DIM

    def forward(self, x):
        return self.loc[: x.shape[0]], self.log_var[: x.shape[0]]


def _outputs():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(B, D, generator=g) * 2
    # log σ² well away from 0 (where exp(log σ²) and exp(½ log σ²) would agree), both signs
    log_var = torch.tensor([[-2.0, 1.5, 0.8], [2.2, -1.1, -0.6], [1.0, -2.5, 0.5], [-0.7, 0.9, 2.8], [1.7, -1.9, -1.3]])
    return loc, log_var


def _vae(**guide_kwargs):
    torch.manual_seed(0)
    loc, log_var = _outputs()
    encoder = FixedEncoder(loc, log_var)
    decoder = MLPDecoder(D, X_DIM, (4,))
    return (
        VAE(
            encoder,
            decoder,
            D,
            likelihood="bernoulli",
            guide="diagonal",
            x_dim=X_DIM,
            guide_kwargs=guide_kwargs or None,
        ),
        loc,
        log_var,
    )


def _x():
    return (torch.rand(B, X_DIM, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def _closed_form_log_q(z, loc, log_var):
    return -0.5 * ((z - loc) ** 2 / torch.exp(log_var) + log_var + math.log(2 * math.pi)).sum(-1)


def test_diagonal_is_the_registered_family_the_vae_builds():
    vae, _, _ = _vae()
    assert guide_family("diagonal") is DiagonalNormal
    assert type(vae.q) is DiagonalNormal


@pytest.mark.parametrize("num_data", [None, 50])
def test_guide_site_is_normal_of_mu_and_exp_half_log_var_as_an_event(num_data):
    vae, loc, log_var = _vae()
    x = _x()
    pyro.set_rng_seed(3)
    tr = poutine.trace(vae.guide).get_trace(x, num_data=num_data)
    site = tr.nodes["z"]
    fn = site["fn"]
    assert site["type"] == "sample" and not site["is_observed"]
    # Normal(μ, exp(½ log σ²)).to_event(1)
    assert isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1
    assert type(fn.base_dist) is dist.Normal
    assert fn.batch_shape == (B,) and fn.event_shape == (D,)
    assert fn.base_dist.batch_shape == (B, D)
    assert torch.equal(fn.base_dist.loc.detach(), loc), ("loc", fn.base_dist.loc[0], loc[0])
    assert torch.allclose(fn.base_dist.scale.detach(), torch.exp(0.5 * log_var), rtol=1e-6, atol=0), (
        "scale",
        fn.base_dist.scale[0],
        torch.exp(0.5 * log_var)[0],
    )
    assert torch.allclose(fn.base_dist.scale.detach() ** 2, torch.exp(log_var), rtol=1e-5, atol=0)
    assert torch.allclose(fn.mean.detach(), loc) and torch.allclose(fn.variance.detach(), torch.exp(log_var), rtol=1e-5)
    assert fn.has_rsample
    # the site is in the data plate of B points
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert site["cond_indep_stack"][0].size == B
    # log q at the site's own sample and at another point, against the closed form
    z = site["value"]
    assert z.shape == (B, D)
    assert torch.allclose(fn.log_prob(z), _closed_form_log_q(z, loc, log_var), rtol=1e-5, atol=1e-5)
    other = torch.randn(B, D, generator=torch.Generator().manual_seed(9)) * 3
    assert fn.log_prob(other).shape == (B,)
    assert torch.allclose(fn.log_prob(other), _closed_form_log_q(other, loc, log_var), rtol=1e-5, atol=1e-5)
    # the trace's own log_prob (scaled by the plate's N/B) agrees too
    tr.compute_log_prob()
    s = (num_data or B) / B
    assert torch.allclose(site["log_prob"], s * _closed_form_log_q(z, loc, log_var), rtol=1e-5, atol=1e-5)


def test_sample_is_reparameterized_mu_plus_sigma_eps():
    """z = μ + exp(½ log σ²) ε: ∂Σz/∂μ = 1 and ∂Σz/∂(log σ²) = ½ (z − μ), elementwise."""
    vae, loc, log_var = _vae()
    x = _x()
    pyro.set_rng_seed(4)
    tr = poutine.trace(vae.guide).get_trace(x)
    z = tr.nodes["z"]["value"]
    enc = vae.q.encoder
    d_loc, d_log_var = torch.autograd.grad(z.sum(), [enc.loc, enc.log_var])
    assert torch.allclose(d_loc, torch.ones(B, D)), ("dz/dmu", d_loc[0])
    assert torch.allclose(d_log_var, 0.5 * (z.detach() - loc), rtol=1e-5, atol=1e-6), (
        "dz/dlog_var",
        d_log_var[0],
        0.5 * (z.detach() - loc)[0],
    )
    # the same ε: z − μ is σ times the standard draw the seed gives
    pyro.set_rng_seed(4)
    eps = torch.randn(B, D)
    assert torch.allclose(z.detach(), loc + torch.exp(0.5 * log_var) * eps, rtol=1e-5, atol=1e-6)


def test_encode_and_score_function_site_build_the_same_distribution():
    vae, loc, log_var = _vae()
    q = vae.encode(_x())
    assert isinstance(q, dist.Independent) and q.batch_shape == (B,) and q.event_shape == (D,), (
        type(q).__name__,
        q.batch_shape,
        q.event_shape,
    )
    assert torch.allclose(q.base_dist.scale.detach(), torch.exp(0.5 * log_var), rtol=1e-6), (
        "scale",
        q.base_dist.scale[0],
        torch.exp(0.5 * log_var)[0],
    )
    # the non-reparameterized variant: the same Normal(μ, exp(½ log σ²)), without rsample
    score, _, _ = _vae(reparameterized=False)
    fn = poutine.trace(score.guide).get_trace(_x()).nodes["z"]["fn"]
    assert isinstance(fn, dist.Independent) and type(fn.base_dist) is NonReparameterizedNormal
    assert not fn.has_rsample
    assert fn.batch_shape == (B,) and fn.event_shape == (D,)
    assert torch.equal(fn.base_dist.loc.detach(), loc)
    assert torch.allclose(fn.base_dist.scale.detach(), torch.exp(0.5 * log_var), rtol=1e-6)
    z = torch.zeros(B, D)
    assert torch.allclose(fn.log_prob(z), _closed_form_log_q(z, loc, log_var), rtol=1e-5, atol=1e-5)


def test_elbo_kl_term_uses_the_diagonal_gaussian():
    """TraceMeanField_ELBO's analytic KL(q ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − log σ²) per point:
    the family's Normal is what the closed-form KL sees."""
    vae, loc, log_var = _vae()
    x = _x()
    q = poutine.trace(vae.guide).get_trace(x).nodes["z"]["fn"]
    kl = torch.distributions.kl_divergence(q, vae.prior((B,)))
    expected = 0.5 * (torch.exp(log_var) + loc**2 - 1 - log_var).sum(-1)
    assert kl.shape == (B,)
    assert torch.allclose(kl, expected, rtol=1e-5, atol=1e-5), ("KL", kl, expected)
