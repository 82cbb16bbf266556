"""AmortizedGuide: an amortized guide for a user's own Pyro model, checked against a
linear-Gaussian model whose posterior and log-likelihood are known in closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal

from pyro_vae import AmortizedGuide, ModelGuide, fit
from pyro_vae.data import ImageData
from pyro_vae.objectives import IWAE_ELBO

D, SIGMA = 5, 0.3


def ppca_parameters(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, 3, generator=g)
    W[:, 2] = W[:, 0] + 0.3 * W[:, 2]  # the third column nearly the first: a strongly coupled posterior
    return W, torch.randn(D, generator=g)


W, BIAS = ppca_parameters()


def ppca(x):
    """z1 ∈ ℝ², z2 ∈ ℝ (two latent sites in the plate); x = W [z1; z2] + b + σ ε."""
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
        loc = torch.cat([z1, z2.unsqueeze(-1)], -1) @ W.T + BIAS
        pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)


def exact_log_px(x):
    """log N(x; b, W Wᵀ + σ² I)."""
    cov = W @ W.T + SIGMA**2 * torch.eye(D)
    return dist.MultivariateNormal(BIAS, covariance_matrix=cov).log_prob(x)


def ppca_data(n=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    return z @ W.T + BIAS + SIGMA * torch.randn(n, D, generator=g)


def train(guide, x, steps=1000):
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.999})  # lr × 0.999 per step
    svi = SVI(ppca, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1))
    for _ in range(steps):
        svi.step(x)


def elbo_per_point(guide, x, particles=4000):
    return -Trace_ELBO(num_particles=particles, vectorize_particles=True).loss(ppca, guide, x) / x.shape[0]


def test_full_family_reaches_the_exact_log_likelihood_and_the_diagonal_does_not():
    x = ppca_data()
    exact = exact_log_px(x).mean().item()
    gaps = {}
    for family in ("full", "diagonal"):
        pyro.set_rng_seed(0)
        guide = AmortizedGuide(ppca, family=family, hidden_dims=())  # a linear encoder, as the posterior mean is
        train(guide, x)
        pyro.set_rng_seed(1)
        gaps[family] = exact - elbo_per_point(guide, x)
    assert -0.02 < gaps["full"] < 0.05, gaps  # the ELBO is a lower bound: only MC error may cross 0
    # the diagonal family cannot represent the coupling of z1 and z2: KL(q ‖ p(z|x)) > 0
    assert gaps["diagonal"] > 0.3, gaps


def test_sites_are_found_and_split_with_supports():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a.sum(-1, keepdim=True) * torch.ones(3), s.unsqueeze(-1)).to_event(1), obs=x)

    guide = AmortizedGuide(model, hidden_dims=(8,))
    x = torch.randn(7, 3)
    tr = poutine.trace(guide).get_trace(x)
    assert [(s["name"], s["shape"]) for s in guide.sites] == [("a", (2,)), ("s", ())]
    assert tr.nodes["a"]["value"].shape == (7, 2) and (tr.nodes["s"]["value"] > 0).all()
    # log q(s) = log q(u) − log |ds/du| with s = exp(u): the Delta carries −u
    u = tr.nodes[f"_{guide._pyro_name}_latent"]["value"]
    assert torch.allclose(tr.nodes["s"]["fn"].log_density, -u[..., 2])


def test_works_with_meanfield_iwae_and_log_likelihood():
    from pyro_vae import log_likelihood

    x = ppca_data(50)
    guide = AmortizedGuide(ppca, family="full", hidden_dims=())
    train(guide, x, steps=500)
    assert math.isfinite(TraceMeanField_ELBO().loss(ppca, guide, x))
    assert math.isfinite(IWAE_ELBO(5).loss(ppca, guide, x))
    pyro.set_rng_seed(0)
    ll = log_likelihood(ppca, guide, x, num_samples=500)
    assert torch.allclose(ll.float(), exact_log_px(x), atol=0.1)


def test_a_single_real_site_gets_the_family_directly_and_a_closed_form_kl():
    from pyro_vae import build_vae

    vae = build_vae((1, 2, 3), z_dim=2, hidden_dims=(8,))
    guide = AmortizedGuide(vae.model, family="diagonal", hidden_dims=(8,))
    x = (torch.rand(4, 6) < 0.5).float()
    tr = poutine.trace(guide).get_trace(x)
    assert type(tr.nodes["z"]["fn"]) is dist.Independent and len([n for n in tr.nodes if n.startswith("_")]) <= 2
    pyro.set_rng_seed(0)
    mf = TraceMeanField_ELBO(num_particles=2000, vectorize_particles=True).loss(vae.model, guide, x)
    pyro.set_rng_seed(0)
    mc = Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(vae.model, guide, x)
    assert mf == pytest.approx(mc, rel=0.02)


def test_fit_trains_a_users_model_with_an_amortized_guide():
    x = ppca_data(300)
    data = ImageData(x, None, (1, 1, D), name="ppca")
    guide = AmortizedGuide(ppca, family="full", hidden_dims=())
    history = fit(ModelGuide(ppca, guide), data, epochs=60, batch_size=50, lr=0.03, particles=8, progress=False)
    assert history.train_loss[-1] < history.train_loss[0] - 10.0
    gap = exact_log_px(x).mean().item() - elbo_per_point(guide, x)
    assert 0 < gap < 0.6, gap  # (the SVI test above goes to 0.05 with a decaying learning rate)


def test_a_model_that_ignores_num_data_is_refused():
    def model(x, num_data=None):  # takes num_data, but does not scale its plate
        ppca(x)

    with pytest.raises(ValueError, match="must scale its data plate"):
        AmortizedGuide(model)(ppca_data(10), num_data=100)


def test_combines_with_an_autoguide_for_a_global_latent():
    S0 = 0.2  # a prior strong enough that the N/B scale moves the posterior mean

    def model(x, num_data=None):
        shift = pyro.sample("shift", dist.Normal(torch.zeros(D), S0).to_event(1))  # global: scale 1
        B = x.shape[0]
        with pyro.plate("data", B), poutine.scale(scale=(num_data or B) / B):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + shift, SIGMA).to_event(1), obs=x)

    guide = AutoGuideList(model, create_plates=lambda x, **kw: pyro.plate("data", x.shape[0]))
    guide.append(AutoNormal(poutine.block(model, expose=["shift"])))
    guide.append(AmortizedGuide(poutine.block(model, hide=["shift"]), family="full", hidden_dims=()))
    x = ppca_data(20)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.998}), elbo)
    for i in range(1500):
        svi.step(x[:10] if i % 2 else x[10:], num_data=20)  # minibatches of 10 standing for 20 points
    # p(shift | x) = N(m, P⁻¹), P = I / s0² + n Σ⁻¹, m = P⁻¹ Σ⁻¹ Σ_n x_n, Σ = W Wᵀ + σ² I (z marginalized);
    # unscaled minibatches (n = 10 in effect) would give another mean, m_10, as far from m as checked below
    inv = torch.linalg.inv(W @ W.T + SIGMA**2 * torch.eye(D))

    def mean(n):
        return torch.linalg.solve(torch.eye(D) / S0**2 + n * inv, inv @ x.sum(0) * n / len(x))

    loc = pyro.param("AutoGuideList.0.locs.shift").detach()
    assert (mean(20) - mean(10)).abs().max() > 0.15
    assert torch.allclose(loc, mean(20), atol=0.04), (loc, mean(20), mean(10))


def test_posterior_means_and_active_units_count_the_models_latent_units():
    from pyro_vae.eval import active_units, posterior_means

    x = ppca_data(50)
    guide = AmortizedGuide(ppca, family="full", hidden_dims=())
    train(guide, x, steps=300)
    pyro.set_rng_seed(0)
    a = posterior_means(ppca, guide, x, num_samples=4000)
    pyro.set_rng_seed(1)
    b = posterior_means(ppca, guide, x, num_samples=4000)
    assert a.shape == (50, 3)  # z1 (2) and z2 (1): not the auxiliary draw, not the Deltas' one draw
    # E_q[z] from 4000 draws: Monte Carlo error sd ≈ posterior sd (< 0.3) / √4000 < 0.005
    assert torch.allclose(a, b, atol=0.03)
    assert active_units(ppca, guide, x) <= 3


def test_a_data_plate_at_dim_minus_two_gets_draws_of_the_sites_shape():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 2), 1.0).to_event(1))  # batch (B, 1)
            with pyro.plate("features", D, dim=-1):
                pyro.sample("x", dist.Normal(z.sum(-1) * W[:, 0], SIGMA), obs=x)

    guide = AmortizedGuide(model, hidden_dims=(8,))
    x = ppca_data(7)
    with pyro.validation_enabled(True):
        tr = poutine.trace(guide).get_trace(x)
        assert tr.nodes["z"]["value"].shape == (7, 1, 2)
        assert math.isfinite(Trace_ELBO(max_plate_nesting=2).loss(model, guide, x))


@pytest.mark.parametrize(
    "model, message",
    [
        ("discrete", "discrete"),
        ("no plate", "no data plate"),
        ("nested", "share exactly one plate"),
    ],
)
def test_clear_errors(model, message):
    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    def no_plate(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def nested(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", 3, dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    fn = {"discrete": discrete, "no plate": no_plate, "nested": nested}[model]
    with pytest.raises(ValueError, match=message):
        AmortizedGuide(fn)(torch.zeros(4, 3))


def test_fit_refuses_a_model_whose_parameters_it_would_not_train():
    decoder = torch.nn.Linear(3, D)

    def model(x):  # a plain function registering a network and a parameter of its own
        pyro.module("user_decoder", decoder)
        bias = pyro.param("bias", torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z) + bias, SIGMA).to_event(1), obs=x)

    data = ImageData(ppca_data(50), None, (1, 1, D), name="ppca")
    with pytest.raises(ValueError, match="user_decoder.*bias|bias.*user_decoder"):
        fit(ModelGuide(model, AmortizedGuide(model, hidden_dims=())), data, epochs=1, progress=False)


def test_log_likelihood_names_the_batch_size_when_a_guide_is_made_for_fixed_points():
    from pyro_vae import log_likelihood

    x = ppca_data(30)
    guide = AutoNormal(ppca)  # one posterior per point: 30 rows
    guide(x)
    with pytest.raises(ValueError, match="batch_size"):
        log_likelihood(ppca, guide, x, num_samples=10, batch_size=20)
    assert log_likelihood(ppca, guide, x, num_samples=10, batch_size=30).shape == (30,)
