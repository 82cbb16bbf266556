"""The gradient-variance estimates equal ``torch.var`` of the same draws.

:func:`encoder_gradient_moments` accumulates Welford's running mean and M2 and returns
``(mean, M2 / (R − 1))``: the unbiased variance, ``torch.var``'s default (correction 1).
The draws are reproduced two ways: recorded as the function makes them (a wrapper around
the gradient call), and recomputed independently from the same seed with Pyro's ELBO and
``torch.autograd.grad``. A slip of a few percent in the accumulation (a divisor R
instead of R − 1, a step 1/(k + 1), …) is far outside the 1e-6 relative tolerance.

:func:`measure_toy`'s ``var`` is likewise ``torch.var`` of :func:`toy_gradients`' draws
for the same seed, and :func:`sample_variance_se` is checked against the closed forms of
the Gaussian (reparameterized) and ε³ (score function at φ = 0) cases."""

import math

import gradient_variance as gradvar
import pyro
import pytest
import torch

from pyro_vae import build_vae, make_objective

RTOL = 1e-6
R = 40  # repeats: m2 / R instead of m2 / (R − 1) is a 2.5 % slip


@pytest.fixture(scope="module")
def x():
    """A fixed batch of 12 binary 8×8 images."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(12, 64, generator=g) < 0.3).float()


def small_vae(**guide_kwargs):
    torch.manual_seed(0)
    return build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,), guide_kwargs=guide_kwargs or None)


def _close(got, ref, rtol=RTOL):
    """Relative agreement, elementwise, with an absolute floor of rtol·max|ref| for the
    entries (dead units) whose variance is 0."""
    got, ref = got.double(), ref.double()
    floor = rtol * ref.abs().max()
    bad = (got - ref).abs() > rtol * ref.abs() + floor
    return not bad.any(), (got - ref).abs().max().item(), ((got - ref).abs() / ref.abs().clamp_min(1e-300)).max().item()


def _record(monkeypatch, vae):
    """Wrap gradvar's gradient call to keep every draw (the encoder's raw .grad, flat)."""
    params = list(vae.q.encoder.parameters())
    draws = []
    inner = gradvar._backward

    def recording(*args, **kwargs):
        out = inner(*args, **kwargs)
        draws.append(torch.cat([p.grad.detach().reshape(-1).clone() for p in params]).double())
        return out

    monkeypatch.setattr(gradvar, "_backward", recording)
    return draws


@pytest.mark.parametrize("route", ["reparam", "score"])
def test_encoder_gradient_moments_equal_torch_var_of_the_recorded_draws(x, monkeypatch, route):
    vae = gradvar.vae_variant(small_vae(), route)
    draws = _record(monkeypatch, vae)
    pyro.set_rng_seed(11)
    with pyro.get_param_store().scope():
        mean, var = gradvar.encoder_gradient_moments(vae, x, gradvar.route_objective(route), repeats=R)
    assert len(draws) == R
    g = torch.stack(draws) / x.shape[0]  # per data point, as the docstring says
    assert mean.dtype == var.dtype == torch.float64
    assert mean.shape == var.shape == (g.shape[1],)
    assert (g.var(0) > 0).float().mean() > 0.5  # the draws really vary
    ok, abs_err, rel_err = _close(mean, g.mean(0))
    assert ok, ("mean", abs_err, rel_err)
    ok, abs_err, rel_err = _close(var, torch.var(g, dim=0))  # unbiased, correction = 1
    assert ok, ("var", abs_err, rel_err)
    # and not the biased one, which differs by (R − 1)/R
    assert not _close(var, torch.var(g, dim=0, correction=0), rtol=1e-3)[0]


def test_encoder_gradient_moments_equal_torch_var_of_draws_recomputed_from_the_seed(x):
    """No patching: the same seed, R fresh Trace_ELBO gradients by torch.autograd.grad."""
    vae = small_vae()
    objective = make_objective("elbo")
    pyro.set_rng_seed(7)
    mean, var = gradvar.encoder_gradient_moments(vae, x, objective, repeats=R)
    params = list(vae.q.encoder.parameters())
    pyro.set_rng_seed(7)
    draws = []
    for _ in range(R):
        loss = objective.differentiable_loss(vae.model, vae.guide, x)
        grads = torch.autograd.grad(loss, params)
        draws.append(torch.cat([gr.reshape(-1) for gr in grads]).double() / x.shape[0])
    g = torch.stack(draws)
    assert g.std(0).max() > 0
    ok, abs_err, rel_err = _close(mean, g.mean(0))
    assert ok, ("mean", abs_err, rel_err)
    ok, abs_err, rel_err = _close(var, g.var(0, unbiased=True))
    assert ok, ("var", abs_err, rel_err)
    # the network is unchanged and no gradient is left behind
    assert all(p.grad is None for p in vae.parameters())


def test_welford_is_exact_on_known_draws(monkeypatch):
    """Feed the accumulation fixed, badly centred draws (a large common offset): its mean
    and variance must equal torch's two-pass ones."""
    vae = small_vae()
    params = list(vae.q.encoder.parameters())
    gen = torch.Generator().manual_seed(0)
    sizes = [p.numel() for p in params]
    table = [1e3 + torch.randn(sum(sizes), generator=gen, dtype=torch.float64) * (1 + k % 3) for k in range(R)]
    calls = iter(table)

    def fake_backward(objective, model, guide, *args):
        flat = next(calls)
        for p, chunk in zip(params, flat.split(sizes)):
            p.grad = chunk.reshape(p.shape).to(p.dtype).clone()

    monkeypatch.setattr(gradvar, "_backward", fake_backward)
    b = 4
    mean, var = gradvar.encoder_gradient_moments(vae, torch.zeros(b, 64), make_objective("elbo"), repeats=R)
    g = torch.stack([t.float().double() for t in table]) / b
    ok, abs_err, rel_err = _close(mean, g.mean(0), rtol=1e-9)
    assert ok, ("mean", abs_err, rel_err)
    ok, abs_err, rel_err = _close(var, torch.var(g, dim=0), rtol=1e-6)
    assert ok, ("var", abs_err, rel_err)


@pytest.mark.parametrize("route", ["reparam", "score", "score-entropy"])
def test_measure_toy_variance_is_torch_var_of_the_same_toy_gradients(route):
    phis, sizes, repeats, seed = (0.0, 1.5), (1, 7), 60, 4
    rows = gradvar.measure_toy(
        phis=phis, sample_sizes=sizes, repeats=repeats, routes=(route,), seed=seed, progress=False
    )
    pyro.set_rng_seed(seed)
    for row, (phi, n) in zip(rows, [(p, n) for p in phis for n in sizes]):
        g = gradvar.toy_gradients(phi, route, n, repeats)
        assert g.shape == (repeats,) and g.dtype == torch.float64
        assert (row["phi"], row["N"], row["repeats"]) == (phi, n, repeats)
        assert row["mean"] == pytest.approx(g.mean().item(), rel=1e-9, abs=1e-12)
        assert row["var"] == pytest.approx(torch.var(g).item(), rel=1e-9)  # unbiased
        var_closed = gradvar.toy_variance(route, phi) / n
        assert row["var_closed"] == pytest.approx(var_closed, rel=1e-12)
        assert row["z"] == pytest.approx((torch.var(g).item() - var_closed) / row["var_se"], rel=1e-9)


def test_toy_gradients_are_the_reparameterized_estimator_of_the_seeded_noise():
    """R draws of 2(φ + ε̄): reproducible from the seed, with torch.var matching the
    closed-form 4/N within its standard error."""
    pyro.set_rng_seed(2)
    a = gradvar.toy_gradients(0.5, "reparam", 5, 400)
    pyro.set_rng_seed(2)
    b = gradvar.toy_gradients(0.5, "reparam", 5, 400)
    assert torch.equal(a, b)
    se = gradvar.sample_variance_se("reparam", 0.5, 5, 400)
    assert abs(a.var().item() - 4 / 5) < 5 * se


@pytest.mark.parametrize("n, r", [(1, 10), (3, 40), (100, 1000)])
def test_sample_variance_se_closed_forms(n, r):
    # reparameterized: Gaussian, Var s² = 2 σ⁴_N / (R − 1), σ²_N = 4 / N
    sigma2 = 4.0 / n
    assert gradvar.sample_variance_se("reparam", 0.3, n, r) == pytest.approx(
        math.sqrt(2 * sigma2**2 / (r - 1)), rel=1e-9
    )
    # score function at φ = 0: g = ε³, σ² = E ε⁶ = 15, μ₄ = E ε¹² = 11!! = 10395
    var, m4 = 15.0, 10395.0
    var_n = var / n
    m4_n = m4 / n**3 + 3 * (n - 1) * var**2 / n**3
    expected = math.sqrt(m4_n / r - var_n**2 * (r - 3) / (r * (r - 1)))
    assert gradvar.sample_variance_se("score", 0.0, n, r) == pytest.approx(expected, rel=1e-9)
