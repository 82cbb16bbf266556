"""The ELBO objectives against closed forms.

Tolerances come from the Monte Carlo sample size: a mean of R independent draws is
compared with its target within ``Z`` standard errors (sample sd / sqrt(R)).
"""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import build_vae, make_objective

Z = 5.0  # standard errors; P(|N(0,1)| > 5) ≈ 6e-7 per comparison


def tiny_vae(z_dim=3, x_dim=12, seed=0):
    torch.manual_seed(seed)
    vae = build_vae((1, 3, 4), z_dim=z_dim, hidden_dims=(16,), likelihood="bernoulli")
    with torch.no_grad():  # a posterior away from the prior: μ ≈ 1, σ² ≈ e^-2, KL of a few nats
        vae.q.encoder.head.bias[:z_dim] += 1.0
        vae.q.encoder.head.bias[z_dim:] -= 2.0
    x = (torch.rand(5, x_dim) < 0.4).float()
    return vae, x


def closed_form_kl(vae, x):
    """Theorem 1.1: KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)."""
    loc, log_var = vae.q.encoder(x)
    return 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)


def log_px_given_sampled_z(vae, x, seed):
    """log p(x|z) at the z the guide draws under ``seed`` (the draw the ELBO uses)."""
    pyro.set_rng_seed(seed)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    site = model_tr.nodes["x"]
    return site["fn"].log_prob(site["value"]).sum(), guide_tr, model_tr


def test_meanfield_subtracts_the_closed_form_kl():
    vae, x = tiny_vae()
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = make_objective("meanfield").loss(vae.model, vae.guide, x)
        log_px, _, _ = log_px_given_sampled_z(vae, x, seed)
        expected = -log_px + closed_form_kl(vae, x).sum()
        assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)


def test_closed_form_kl_matches_torch_kl_divergence():
    vae, x = tiny_vae()
    q = vae.encode(x)
    kl = torch.distributions.kl_divergence(q, vae.prior().expand([x.shape[0]]))
    assert torch.allclose(kl, closed_form_kl(vae, x), atol=1e-5)


def test_monte_carlo_kl_agrees_with_closed_form():
    """With common random numbers, Trace_ELBO − TraceMeanField_ELBO is the Monte Carlo KL
    log q(z|x) − log p(z) minus the analytic KL: mean zero, within Z standard errors."""
    vae, x = tiny_vae()
    elbo, mf = make_objective("elbo", num_particles=50), make_objective("meanfield", num_particles=50)
    diffs = []
    for seed in range(200):
        pyro.set_rng_seed(seed)
        a = elbo.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(seed)
        b = mf.loss(vae.model, vae.guide, x)
        diffs.append(a - b)
    d = torch.tensor(diffs, dtype=torch.float64)
    se = d.std() / math.sqrt(len(d))
    assert d.std() > 0  # the Monte Carlo KL really is random
    assert abs(d.mean()) < Z * se, (d.mean(), se)
    # power: a closed form off by 5% would be caught
    kl = closed_form_kl(vae, x).sum().item()
    assert abs(d.mean() - 0.05 * kl) > Z * se, (kl, se)


def _grads(vae, objective, x, seed):
    pyro.set_rng_seed(seed)
    vae.zero_grad(set_to_none=True)
    objective.differentiable_loss(vae.model, vae.guide, x).backward()
    return torch.cat([p.grad.flatten() for p in vae.parameters()]).double()


def test_gradients_of_the_two_objectives_agree_in_expectation():
    vae, x = tiny_vae()
    elbo = make_objective("elbo", num_particles=200)
    mf = make_objective("meanfield", num_particles=200)
    d = torch.stack([_grads(vae, elbo, x, s) - _grads(vae, mf, x, s) for s in range(100)])
    mean, se = d.mean(0), d.std(0) / math.sqrt(d.shape[0])
    random = se > 1e-9
    assert random.sum() > 10  # the encoder's gradients differ draw by draw
    assert (mean[~random].abs() < 1e-6).all()  # decoder grads: identical under common random numbers
    z = (mean[random] / se[random]).abs()
    assert z.max() < Z, z.max()
    # and the comparison has power: a 5% bias in one objective's gradient is detected
    g = torch.stack([_grads(vae, mf, x, s) for s in range(100)])
    biased = d - 0.05 * g
    zb = (biased.mean(0)[random] / se[random]).abs()
    assert zb.max() > Z


def test_vectorized_particles_average_the_single_particle_losses():
    """L vectorized particles give the mean of L single-particle estimates: same
    expectation, variance divided by L."""
    vae, x = tiny_vae()
    single = torch.tensor([make_objective("elbo").loss(vae.model, vae.guide, x) for _ in range(300)])
    multi = torch.tensor([make_objective("elbo", num_particles=16).loss(vae.model, vae.guide, x) for _ in range(300)])
    se = torch.sqrt(single.var() / 300 + multi.var() / 300)
    assert abs(single.mean() - multi.mean()) < Z * se
    ratio = single.var() / multi.var()
    # Var ratio of two sample variances with 299 df each: 16 within a factor of 1.6
    assert 16 / 1.6 < ratio < 16 * 1.6, ratio


def test_objective_names_and_errors():
    assert type(make_objective("Trace_ELBO")).__name__ == "Trace_ELBO"
    assert type(make_objective("meanfield")).__name__ == "TraceMeanField_ELBO"
    assert type(make_objective("tracegraph")).__name__ == "TraceGraph_ELBO"
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("nope")
    with pytest.raises(ValueError, match="num_particles"):
        make_objective("elbo", num_particles=0)
