"""The mixture of diagonal Gaussians and the VampPrior (:mod:`pyro_vae.priors`)."""

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import build_model, build_vae
from pyro_vae.priors import DiagonalGaussianMixture, VampPrior


def mixture(K=7, d=3, dtype=torch.float64, seed=0, scale_range=(0.05, 1.5)):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(K, d, generator=g, dtype=dtype) * 2
    lo, hi = scale_range
    scale = lo + (hi - lo) * torch.rand(K, d, generator=g, dtype=dtype)
    logits = torch.randn(K, generator=g, dtype=dtype)
    return loc, scale, logits


def test_log_prob_equals_pyros_mixture_same_family_in_float64():
    loc, scale, logits = mixture()
    ours = DiagonalGaussianMixture(loc, scale, logits, batch_shape=(5,))
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                 dist.Normal(loc, scale).to_event(1)).expand((5,))
    z = torch.randn(4, 5, 3, dtype=torch.float64) * 3
    assert ours.log_prob(z).shape == ref.log_prob(z).shape == (4, 5)
    assert torch.allclose(ours.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-10)


def test_float32_log_prob_errs_by_a_few_roundings_of_the_cancelled_terms():
    """The matrix-product form cancels the terms Σ_j (z_j² + μ_kj²)/σ_kj²: in float32 the
    error of log p(z) stays within 8 roundings (ε = 2⁻²⁴) of the largest of them over k,
    K = 500, d = 50, σ in [0.05, 1.5], at points far from and near the components."""
    loc, scale, logits = mixture(K=500, d=50, seed=1)
    g = torch.Generator().manual_seed(2)
    far = torch.rand(2000, 50, generator=g, dtype=torch.float64) * 8 - 4
    near = loc[torch.randint(500, (2000,), generator=g)] + scale[:1] * torch.randn(2000, 50, generator=g,
                                                                                   dtype=torch.float64)
    w = scale.pow(-2)
    for points in (far, near):
        exact = DiagonalGaussianMixture(loc, scale, logits).log_prob(points)
        single = DiagonalGaussianMixture(loc.float(), scale.float(), logits.float()).log_prob(points.float())
        cancelled = ((points ** 2) @ w.T + (loc ** 2 * w).sum(-1)).max(-1).values
        assert ((single.double() - exact).abs() <= 8 * 2.0 ** -24 * cancelled).all()


def test_uniform_weights_by_default_and_the_components():
    loc, scale, _ = mixture(K=4, d=2)
    m = DiagonalGaussianMixture(loc, scale)
    z = torch.randn(6, 2, dtype=torch.float64)
    comp = dist.Normal(loc, scale).to_event(1).log_prob(z[:, None, :]) - math.log(4)
    assert torch.allclose(m.component_log_prob(z), comp, atol=1e-12)
    assert torch.allclose(m.log_prob(z), torch.logsumexp(comp, -1), atol=1e-12)


def test_samples_follow_the_mixture():
    """Kolmogorov–Smirnov in one dimension against Σ_k π_k Φ((z − μ_k)/σ_k), n = 40,000
    (the 0.1% critical value 1.95/√n), and the sample mean and variance against the
    closed forms (5 standard errors)."""
    loc, scale, logits = mixture(K=5, d=1, seed=3)
    m = DiagonalGaussianMixture(loc, scale, logits)
    torch.manual_seed(0)
    n = 40_000
    z = m.sample((n,))
    assert z.shape == (n, 1)
    pi = torch.softmax(logits, -1)
    s = z[:, 0].sort().values
    cdf = (pi * torch.distributions.Normal(loc[:, 0], scale[:, 0]).cdf(s[:, None])).sum(-1)
    ks = torch.maximum((torch.arange(1, n + 1) / n - cdf).abs(), (torch.arange(n) / n - cdf).abs()).max()
    assert ks < 1.95 / math.sqrt(n)
    sd = m.variance.sqrt()[0]
    assert (z.mean() - m.mean[0]).abs() < 5 * sd / math.sqrt(n)
    assert (z.var() / m.variance[0] - 1).abs() < 5 * math.sqrt(2 / n) * 2  # kurtosis of a mixture: 2x slack


def test_shapes_expand_and_validation():
    loc, scale, _ = mixture(K=3, d=2)
    m = DiagonalGaussianMixture(loc, scale, batch_shape=(4,))
    assert m.sample().shape == (4, 2) and m.sample((6,)).shape == (6, 4, 2)
    assert m.expand((5, 4)).log_prob(torch.zeros(2, dtype=torch.float64)).shape == (5, 4)
    assert m.mean.shape == m.variance.shape == (4, 2)
    with pytest.raises(ValueError, match="scale"):
        DiagonalGaussianMixture(loc, -scale, validate_args=True)
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        DiagonalGaussianMixture(loc[0], scale[0])
    with pytest.raises(ValueError):
        DiagonalGaussianMixture(loc, scale, validate_args=True).log_prob(torch.zeros(3, dtype=torch.float64))


def binary_batch(n=10, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


@pytest.mark.parametrize("guide", ["diagonal", "full", "flow"])
def test_the_vamp_prior_is_the_mixture_of_the_encoders_gaussians_at_the_pseudo_inputs(guide):
    """log p(z) at the model's site = log (1/K) Σ_k N(z; μ(u_k), σ²(u_k)), u = clamp(P, 0, 1)."""
    torch.manual_seed(0)
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), guide=guide, prior="vamp", pseudo_inputs=6)
    with torch.no_grad():
        vae.vamp.pseudo_inputs.uniform_(-0.5, 1.5)  # some outside [0, 1]: clamped
    x = binary_batch()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    z = guide_tr.nodes["z"]["value"]
    u = vae.vamp.pseudo_inputs.clamp(0, 1)
    loc, log_var = vae.q.encoder(u)[:2]
    ref = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(6)),
                                 dist.Normal(loc, (0.5 * log_var).exp()).to_event(1))
    site = model_tr.nodes["z"]
    assert site["fn"].batch_shape == (10,)
    assert torch.allclose(site["fn"].log_prob(z), ref.log_prob(z), atol=1e-5)


def test_each_weight_has_one_name_and_svi_trains_the_pseudo_inputs():
    """The prior uses the guide's encoder without registering it a second time: every
    parameter is in Pyro's param store once, and SVI with ``pyro.optim`` moves the
    pseudo-inputs and the encoder."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), prior="vamp", pseudo_inputs=6)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = vae.vamp.pseudo_inputs.detach().clone()
    svi.step(binary_batch())
    store = pyro.get_param_store()
    tensors = [store._params[k] for k in store.keys()]
    assert len({id(t) for t in tensors}) == len(tensors) == len(list(vae.parameters()))
    assert not torch.equal(before, vae.vamp.pseudo_inputs.detach())


def test_the_prior_term_sends_gradients_to_the_encoder_and_the_pseudo_inputs():
    torch.manual_seed(0)
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), prior="vamp", pseudo_inputs=6)
    z = torch.randn(10, 2)
    vae.prior((10,)).log_prob(z).sum().backward()
    assert vae.vamp.pseudo_inputs.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.q.encoder.parameters())
    assert all(p.grad is None for p in vae.decoder.parameters())


def test_mean_field_elbo_falls_back_to_the_monte_carlo_kl():
    """No closed-form KL(N ‖ mixture): Pyro's ``TraceMeanField_ELBO`` estimates it, and with
    the same draws gives the ``Trace_ELBO`` loss."""
    torch.manual_seed(0)
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), prior="vamp", pseudo_inputs=6)
    x = binary_batch()
    pyro.set_rng_seed(1)
    a = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    b = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(a, b)


def test_config_rebuilds_the_prior_and_generation_samples_it():
    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), prior="vamp", pseudo_inputs=6)
    assert vae.config["prior"] == "vamp" and vae.config["pseudo_inputs"] == 6
    again = build_model(vae.config)
    again.load_state_dict(vae.state_dict())
    assert again.prior_kind == "vamp" and again.vamp.pseudo_inputs.shape == (6, 12)
    assert vae.sample(5).shape == (5, 12)
    assert build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,)).config.get("prior") is None


@pytest.mark.parametrize("kw, match", [
    (dict(prior="learned"), "unknown prior 'learned' for a VAE"),
    (dict(pseudo_inputs=5), "pass prior='vamp'"),
    (dict(prior="vamp", pseudo_inputs=0), "positive integer number of pseudo-inputs"),
    (dict(prior="vamp", pseudo_inputs=2.5), "positive integer number of pseudo-inputs"),
])
def test_bad_prior_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), **kw)


def test_vamp_prior_module_alone():
    vamp = VampPrior(12, 4)
    enc = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,)).q.encoder
    m = vamp(enc, (3,))
    assert isinstance(m, DiagonalGaussianMixture) and m.batch_shape == (3,) and m.event_shape == (2,)
    assert (vamp.pseudo_inputs - 0.05).abs().max() < 0.1  # Tomczak & Welling's start, N(0.05, 0.01²)
