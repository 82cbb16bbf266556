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
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)).expand((5,))
    z = torch.randn(4, 5, 3, dtype=torch.float64) * 3
    assert ours.log_prob(z).shape == ref.log_prob(z).shape == (4, 5)
    assert torch.allclose(ours.log_prob(z), ref.log_prob(z), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.1, 0.01, 0.003])
def test_float32_inputs_keep_float64_accuracy_at_small_posterior_scales(sigma):
    """The matrix products cancel Σ_j (z_j² + μ_kj²)/σ_kj² (10⁷ at σ = 0.003): done in float32
    they would err by nats, biased upwards. K = 500, d = 50, 20 active dimensions at scale σ
    with |μ| ≈ 1.5, points drawn near the components: float32 inputs give the float64 value
    rounded once to float32 (within one ulp), with no bias."""
    g = torch.Generator().manual_seed(4)
    loc = torch.randn(500, 50, generator=g, dtype=torch.float64) * 1.5
    scale = torch.ones(500, 50, dtype=torch.float64)
    scale[:, :20] = sigma * (0.5 + torch.rand(500, 20, generator=g, dtype=torch.float64))
    points = loc[torch.randint(500, (4000,), generator=g)] + scale[:1] * torch.randn(
        4000, 50, generator=g, dtype=torch.float64
    )
    points32, loc32, scale32 = points.float(), loc.float(), scale.float()
    exact = DiagonalGaussianMixture(loc32.double(), scale32.double()).log_prob(points32.double())
    single = DiagonalGaussianMixture(loc32, scale32).log_prob(points32)
    assert single.dtype == torch.float32
    err = single.double() - exact
    assert (err.abs() <= 2.0**-23 * exact.abs()).all(), err.abs().max()
    assert err.mean().abs() < 1e-6


def test_uniform_weights_by_default_and_the_components():
    loc, scale, _ = mixture(K=4, d=2)
    m = DiagonalGaussianMixture(loc, scale)
    z = torch.randn(6, 2, dtype=torch.float64)
    comp = dist.Normal(loc, scale).to_event(1).log_prob(z[:, None, :]) - math.log(4)
    assert torch.allclose(m.component_log_prob(z), comp, atol=1e-12)
    assert m.component_log_prob(z.float()).dtype == torch.float64
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
    with pytest.raises(ValueError, match=r"cannot expand a mixture of batch shape \(4,\) to \(3,\)"):
        m.expand((3,))
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
    ref = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(6)), dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
    )
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


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prior="learned"), "unknown prior 'learned' for a VAE"),
        (dict(pseudo_inputs=5), "pass prior='vamp'"),
        (dict(prior="vamp", pseudo_inputs=0), "positive integer number of pseudo-inputs"),
        (dict(prior="vamp", pseudo_inputs=2.5), "positive integer number of pseudo-inputs"),
    ],
)
def test_bad_prior_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), **kw)


def test_a_numpy_integer_k_is_taken_and_an_encoder_without_two_heads_is_refused_when_built():
    import numpy as np

    from pyro_vae.guides import PointMass

    assert VampPrior(12, np.int64(5)).pseudo_inputs.shape == (5, 12)
    from pyro_vae import VAE, MLPDecoder, MLPEncoder

    encoder, decoder = MLPEncoder(12, 2, (8,), out_dims=(2,)), MLPDecoder(2, 12, (8,))
    message = r"two heads of shape \(batch, 2\) first; the PointMass encoder gives \[\(1, 2\)\]"
    with pytest.raises(ValueError, match=message):
        VAE(encoder, decoder, 2, guide=PointMass, x_dim=12, prior="vamp")


def test_latent_space_measures_refuse_a_vamp_prior():
    from pyro_vae.eval.latent import latent_frame

    vae = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,), prior="vamp", pseudo_inputs=6)
    with pytest.raises(ValueError, match="VampPrior, a mixture: they do not apply"):
        latent_frame(vae, torch.zeros(3, 2))


def test_vamp_prior_module_alone():
    vamp = VampPrior(12, 4)
    enc = build_vae((1, 3, 4), z_dim=2, hidden_dims=(8,)).q.encoder
    m = vamp(enc, (3,))
    assert isinstance(m, DiagonalGaussianMixture) and m.batch_shape == (3,) and m.event_shape == (2,)
    assert (vamp.pseudo_inputs - 0.05).abs().max() < 0.1  # Tomczak & Welling's start, N(0.05, 0.01²)
