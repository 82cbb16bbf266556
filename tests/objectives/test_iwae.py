"""The IWAE objective (issue #5): L_K per data point, against Pyro's RenyiELBO(alpha=0)
and against a direct computation; its gradients, its scale, its errors, and training
with every guide family and with a conditional model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.nn import PyroModule

from pyro_vae import build_vae, fit, load_dataset
from pyro_vae.guides import GUIDES, NonReparameterizedNormal
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.objectives import ALIASES, IWAE_ELBO, OBJECTIVES, make_objective
from pyro_vae.train.trainer import Trainer, evaluate_loss

LOG_2PI = math.log(2 * math.pi)


def tiny_vae(z_dim=3, guide="diagonal", **kw):
    torch.manual_seed(0)
    return build_vae((1, 8, 8), z_dim=z_dim, hidden_dims=(16,), guide=guide, **kw)


def binary_batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 64, generator=g) < 0.3).float()


def renyi(K):
    return RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)


# ---- the name ------------------------------------------------------------------------
def test_registered_by_name_with_K_the_number_of_particles():
    obj = make_objective("iwae", num_particles=7)
    assert isinstance(obj, IWAE_ELBO) and obj.num_particles == 7
    assert hasattr(obj, "differentiable_loss")  # the Trainer uses it
    assert "iwae" in OBJECTIVES and ALIASES["IWAE_ELBO"] == "iwae"


@pytest.mark.parametrize("K", [0, -3, 2.5, True])
def test_bad_K_is_a_clear_error(K):
    with pytest.raises(ValueError, match="K|num_particles"):
        IWAE_ELBO(num_particles=K)
    if not isinstance(K, bool):
        with pytest.raises(ValueError, match="num_particles"):
            make_objective("iwae", num_particles=K)


# ---- the value: RenyiELBO and a direct computation, per data point ---------------------
def test_equals_renyi_elbo_alpha0_per_data_point():
    vae, x, K = tiny_vae(), binary_batch(), 9
    iwae = IWAE_ELBO(K)
    for i in range(x.shape[0]):  # one data point at a time: the same draws in both
        pyro.set_rng_seed(100 + i)
        ours = iwae.loss(vae.model, vae.guide, x[i : i + 1])
        pyro.set_rng_seed(100 + i)
        theirs = renyi(K).loss(vae.model, vae.guide, x[i : i + 1])
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-4)
    # and on the whole batch, the per-point bounds sum to Renyi's loss
    pyro.set_rng_seed(7)
    bound = iwae.bound(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    assert -bound.sum().item() == pytest.approx(renyi(K).loss(vae.model, vae.guide, x), rel=1e-6)


def test_equals_a_direct_computation_per_data_point():
    r"""L̂_K(x_b) = logsumexp_k [log p(x_b|z_kb) + log N(z_kb; 0, I) − log N(z_kb; μ_b, σ_b²)] − log K,
    with z_kb = μ_b + σ_b ε_kb computed here from the encoder and decoder by hand."""
    vae, x, K = tiny_vae(z_dim=3), binary_batch(n=5), 11
    pyro.set_rng_seed(3)
    bound = IWAE_ELBO(K).bound(vae.model, vae.guide, x)
    assert bound.shape == (5,)

    pyro.set_rng_seed(3)  # the same standard normal draws, in the same order
    eps = torch.randn(K, 5, 3)
    with torch.no_grad():
        loc, log_var = vae.q.encoder(x)
        sigma = torch.exp(0.5 * log_var)
        z = loc + sigma * eps
        logits = vae.decoder(z)
        log_px_z = (x * logits - F.softplus(logits)).sum(-1)
        log_pz = -0.5 * (z**2 + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps**2 + LOG_2PI) - torch.log(sigma)).sum(-1)
        log_w = log_px_z + log_pz - log_qz  # (K, B)
        direct = torch.logsumexp(log_w, 0) - math.log(K)
    assert torch.allclose(bound.detach(), direct, atol=1e-4, rtol=1e-6)
    # per data point, not pooled: the pooled bound log (1/K) Σ_k Π_b w_kb differs
    pooled = torch.logsumexp(log_w.sum(1), 0) - math.log(K)
    assert abs(pooled.item() - direct.sum().item()) > 0.1


def test_K1_is_the_elbo():
    vae, x = tiny_vae(), binary_batch()
    pyro.set_rng_seed(5)
    ours = IWAE_ELBO(1).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    assert ours == pytest.approx(Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x), rel=1e-6)


# ---- gradients ------------------------------------------------------------------------
def test_gradient_equals_renyi_elbo_gradient():
    vae, x, K = tiny_vae(), binary_batch(), 6
    params = list(vae.parameters())
    pyro.set_rng_seed(11)
    ours = torch.autograd.grad(IWAE_ELBO(K).differentiable_loss(vae.model, vae.guide, x), params)
    vae.zero_grad()
    pyro.set_rng_seed(11)
    renyi(K).loss_and_grads(vae.model, vae.guide, x)
    for g, p in zip(ours, params):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


class OneDimensional(PyroModule):
    """z ~ N(0, 1), x | z ~ N(z, 1), guide q(z) = N(μ, σ) (no encoder), B copies of x in
    the data plate; ``reparameterized=False`` samples z without a pathwise gradient."""

    def __init__(self, reparameterized=True):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(0.0))
        self.log_sigma = torch.nn.Parameter(torch.tensor(0.0))
        self.normal = dist.Normal if reparameterized else NonReparameterizedNormal

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.normal(self.mu.expand(x.shape[0]), self.log_sigma.exp()))


def _grad_mu_groups(module, K, groups=20, per_group=500, x_value=2.0):
    """∂/∂μ of the mean L̂_K over ``per_group`` independent copies, for ``groups`` groups."""
    x = torch.full((per_group,), x_value)
    grads = []
    for _ in range(groups):
        loss = IWAE_ELBO(K).differentiable_loss(module.model, module.guide, x) / per_group
        grads.append(torch.autograd.grad(loss, module.mu)[0])
    g = torch.stack(grads)
    return g.mean().item(), g.std().item() / math.sqrt(groups)


def test_score_function_gradient_agrees_with_the_pathwise_gradient():
    """At a guide site without rsample, the IWAE gradient needs the score-function term;
    both estimators are unbiased for ∇_μ L_K, so their means agree within their standard
    errors, and leaving the term out is visibly biased."""
    K = 5
    pyro.set_rng_seed(0)
    g_path, se_path = _grad_mu_groups(OneDimensional(reparameterized=True), K)
    g_score, se_score = _grad_mu_groups(OneDimensional(reparameterized=False), K, per_group=4000)
    tol = 4 * math.hypot(se_path, se_score)
    assert abs(g_path - g_score) < tol, (g_path, se_path, g_score, se_score)
    assert abs(g_path) > 10 * se_path  # a real signal (the guide's mean 0 is far from the posterior's 1)

    # without the score term (IWAE_ELBO.bound: the direct gradient only) the estimate is wrong
    module = OneDimensional(reparameterized=False)
    x = torch.full((4000,), 2.0)
    biased = [
        torch.autograd.grad(-IWAE_ELBO(K).bound(module.model, module.guide, x).mean(), module.mu)[0] for _ in range(5)
    ]
    assert abs(torch.stack(biased).mean().item() - g_path) > 10 * tol


# ---- the scale and the errors ----------------------------------------------------------
def test_loss_is_scaled_by_the_data_plate_like_the_other_objectives():
    """With the data plate standing for N points (scale N/B), the loss is N/B times the
    unscaled one for the same draws: the scale multiplies the bound, it does not enter
    the weights (whereas Pyro's RenyiELBO raises the weights to the power N/B)."""
    vae, x, K = tiny_vae(), binary_batch(n=6), 4
    iwae = IWAE_ELBO(K)

    def model(x, size=None):  # explicit subsample indices: no random draw for the subsample
        with pyro.plate("data", size or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", vae.prior())
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x)

    def guide(x, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", vae.q(x))

    pyro.set_rng_seed(2)
    unscaled = iwae.loss(model, guide, x)
    pyro.set_rng_seed(2)
    log_w, score, scale = iwae.log_weights(model, guide, x, 600)
    pyro.set_rng_seed(2)
    scaled = iwae.loss(model, guide, x, 600)
    assert scale == pytest.approx(100.0) and score is None and log_w.shape == (K, 6)
    assert scaled == pytest.approx(100.0 * unscaled, rel=1e-5)
    assert -(torch.logsumexp(log_w, 0) - math.log(K)).sum().item() == pytest.approx(unscaled, rel=1e-5)
    pyro.set_rng_seed(2)
    assert renyi(K).loss(model, guide, x) == pytest.approx(unscaled, rel=1e-5)  # they agree at scale 1


class GlobalLatent(PyroModule):
    """A model with a global latent w outside the data plate: no per-data-point bound."""

    def model(self, x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(self, x):
        pyro.sample("w", dist.Normal(0.0, 1.0))


def test_a_latent_outside_the_data_plate_is_a_clear_error():
    m = GlobalLatent()
    with pytest.raises(ValueError, match="data plate.*'w'|'w'.*data plate|outside the data plate"):
        IWAE_ELBO(3).loss(m.model, m.guide, torch.zeros(4))


def test_a_site_scaled_on_its_own_is_a_clear_error():
    vae, x = tiny_vae(), binary_batch()

    def beta_model(x):  # a β-weighted prior term: not p(x, z) / q(z|x) any more
        with vae.plate(x.shape[0]):
            with poutine.scale(scale=0.5):
                z = pyro.sample("z", vae.prior())
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x)

    with pytest.raises(ValueError, match="one scale"):
        IWAE_ELBO(3).loss(beta_model, vae.guide, x)


# ---- training -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    train = load_dataset("digits", "train", binarize="static")
    valid = load_dataset("digits", "valid", binarize="static")
    train.x, train.y = train.x[:300], train.y[:300]
    valid.x, valid.y = valid.x[:100], valid.y[:100]
    return train, valid


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_trains_with_every_guide_family(guide, digits):
    train, valid = digits
    vae = tiny_vae(z_dim=4, guide=guide)
    before = evaluate_loss(vae, valid, IWAE_ELBO(5))  # −L_5 of the untrained model, about 45-50 nats
    history = fit(vae, train, valid, epochs=3, objective="iwae", particles=5, batch_size=30, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in history.valid_loss)
    # −L_5 on the validation digits falls by more than 10 nats, and keeps falling after epoch 1
    assert history.valid_loss[-1] < before - 10.0, (before, history.valid_loss)
    assert history.valid_loss[-1] < history.valid_loss[0], history.valid_loss


class TinyConditional(PyroModule):
    """p(z) p(x | z, c), q(z | x, c), c a one-hot digit class: extra model arguments."""

    def __init__(self, x_dim=64, z_dim=4, classes=10):
        super().__init__()
        self.enc = torch.nn.Linear(x_dim + classes, 2 * z_dim)
        self.dec = torch.nn.Sequential(
            torch.nn.Linear(z_dim + classes, 32), torch.nn.Softplus(), torch.nn.Linear(32, x_dim)
        )
        self.likelihood = Bernoulli()
        self.z_dim, self.classes, self.num_data = z_dim, classes, None

    def plate(self, b):
        return pyro.plate("data", self.num_data or b, subsample_size=b)

    def model(self, x, y):
        c = F.one_hot(y, self.classes).float()
        with self.plate(x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z_dim), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, c.expand(z.shape[:-1] + c.shape[-1:])], -1))
            pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(self, x, y):
        c = F.one_hot(y, self.classes).float()
        loc, log_var = self.enc(torch.cat([x, c], -1)).chunk(2, -1)
        with self.plate(x.shape[0]):
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))


def test_trains_a_conditional_model_with_extra_arguments(digits):
    train, valid = digits
    torch.manual_seed(0)
    model = TinyConditional()
    before = evaluate_loss(model, valid, IWAE_ELBO(5), with_labels=True)
    trainer = Trainer(model, train, valid, objective="iwae", particles=5, batch_size=30, lr=1e-2, with_labels=True)
    history = trainer.run(3, progress=False)
    assert history.valid_loss[-1] < before - 10.0, (before, history.valid_loss)
    assert history.valid_loss[-1] < history.valid_loss[0], history.valid_loss
