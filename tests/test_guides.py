"""Guide families (issue #6): the diagonal, full-covariance and flow posteriors, a user's
own family, and the linear-Gaussian check against the closed-form posterior."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import SIGMA, W, X, linear_gaussian_vae
from run_helpers import exit_code
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import build_vae, fit, load_run
from pyro_vae.cli import main
from pyro_vae.data import ImageData
from pyro_vae.guides import (
    GUIDES,
    DiagonalNormal,
    FullCovarianceNormal,
    NormalizingFlow,
    guide_family,
    kl_mvn_diagonal_normal,
    tril_from_outputs,
)
from pyro_vae.models import build_model
from pyro_vae.objectives import make_objective

FAMILIES = ["diagonal", "full", "flow"]


def _binary_data(n=120, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(4, d, generator=g) < 0.3).float()
    x = proto[torch.randint(0, 4, (n,), generator=g)]
    flip = torch.rand(n, d, generator=g) < 0.05
    return ImageData(torch.where(flip, 1 - x, x), None, (1, 8, 8), name="toy", binarize=None)


# ---- shapes, parameterization, registration ------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_family_gives_a_reparameterized_batch_of_z(name):
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(16,), guide=name)
    x = _binary_data(5).x
    q = vae.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert q.has_rsample
    z = q.rsample()
    assert z.shape == (5, 3)
    q.log_prob(z).sum().backward()
    grads = [p.grad for p in vae.q.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert q.mean.shape == (5, 3)


def test_guides_are_registered_and_unknown_names_are_refused():
    assert guide_family("full") is FullCovarianceNormal and guide_family("flow") is NormalizingFlow
    assert {"diagonal", "full", "flow"} <= set(GUIDES)
    with pytest.raises(ValueError, match="unknown guide 'cholesky'.*full"):
        build_vae((1, 8, 8), z_dim=2, guide="cholesky")


def test_encoder_outputs_of_the_wrong_size_are_named():
    enc = nn.Linear(64, 4)
    family = FullCovarianceNormal(lambda x: enc(x).split([2, 2], -1), z_dim=2)
    with pytest.raises(ValueError, match=r"needs encoder outputs of sizes \(2, 2, 1\), got \(2, 2\)"):
        family(torch.zeros(3, 64))
    with pytest.raises(ValueError, match="num_flows must be a positive integer"):
        NormalizingFlow(enc, z_dim=2, num_flows=0)
    with pytest.raises(ValueError, match="3 strictly-lower entries, got 2"):
        tril_from_outputs(torch.zeros(3), torch.zeros(2))


def test_cholesky_factor_is_lower_triangular_with_a_positive_diagonal():
    g = torch.Generator().manual_seed(1)
    log_var, off = torch.randn(7, 4, generator=g), torch.randn(7, 6, generator=g)
    tril = tril_from_outputs(log_var, off)
    assert torch.equal(tril, tril.tril())
    assert torch.allclose(tril.diagonal(dim1=-2, dim2=-1), torch.exp(0.5 * log_var))
    # row-major strictly-lower order: L[1,0], L[2,0], L[2,1], L[3,0], ...
    assert tril[0, 1, 0] == off[0, 0] and tril[0, 2, 1] == off[0, 2] and tril[0, 3, 2] == off[0, 5]
    # zero off-diagonal entries: exactly the diagonal family
    loc = torch.randn(7, 4, generator=g)
    full = dist.MultivariateNormal(loc, scale_tril=tril_from_outputs(log_var, torch.zeros(7, 6)))
    diag = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
    z = torch.randn(7, 4, generator=g)
    assert torch.allclose(full.log_prob(z), diag.log_prob(z), atol=1e-5)


def test_full_family_starts_as_the_diagonal_one():
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,), guide="full")
    _, tril = vae.q.scale_tril(_binary_data(6).x)
    assert torch.equal(tril, torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1)))


# ---- the closed-form KL that makes TraceMeanField_ELBO apply to the full family -------------
def test_registered_kl_matches_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(2)
    d = 3
    loc, m = torch.randn(5, d, generator=g), torch.randn(5, d, generator=g)
    tril = tril_from_outputs(torch.randn(5, d, generator=g), torch.randn(5, 3, generator=g))
    s = torch.rand(5, d, generator=g) + 0.5
    p = dist.MultivariateNormal(loc, scale_tril=tril)
    kl = kl_divergence(p, dist.Normal(m, s).to_event(1))
    reference = kl_divergence(p, dist.MultivariateNormal(m, scale_tril=torch.diag_embed(s)))  # torch's MVN-MVN
    assert torch.allclose(kl, reference, rtol=1e-5, atol=1e-5)
    assert torch.allclose(kl, kl_mvn_diagonal_normal(p, dist.Normal(m, s).to_event(1)))
    # a product of non-Normal factors is not ours: Pyro's Monte Carlo fallback must see NotImplementedError
    with pytest.raises(NotImplementedError):
        kl_divergence(p, dist.Laplace(m, s).to_event(1))


def test_meanfield_uses_the_closed_form_kl_for_full_and_falls_back_to_monte_carlo_for_flow():
    x = _binary_data(8).x
    # full: with a decoder that ignores z, log p(x|z) is constant, so the meanfield loss is
    # deterministic, −log p(x|z) + KL(q ‖ p) exactly
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(16,), guide="full")
    with torch.no_grad():
        for p in vae.decoder.net[0].parameters():
            p.zero_()
    losses = [make_objective("meanfield").loss(vae.model, vae.guide, x) for _ in range(2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    with torch.no_grad():
        q = vae.encode(x)
        log_lik = vae.likelihood(vae.decoder(torch.zeros(8, 3))).log_prob(x).sum()
        expected = -log_lik + kl_divergence(q, vae.prior().expand([8])).sum()
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    # flow: no KL is known, Pyro falls back to the Monte Carlo term: the same number as Trace_ELBO
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(16,), guide="flow", guide_kwargs={"init_identity": False})
    values = []
    for name in ("elbo", "meanfield"):
        pyro.set_rng_seed(5)
        values.append(make_objective(name).loss(vae.model, vae.guide, x))
    assert values[0] == pytest.approx(values[1], rel=1e-6)


# ---- the flow's density by hand (Theorem 1.3) -------------------------------------------------
def test_flow_log_density_matches_a_change_of_variables_by_hand():
    torch.manual_seed(3)
    d, c = 2, NormalizingFlow.context_dim
    head = nn.Linear(5, 2 * d + c)
    encoder = lambda x: head(x).split([d, d, c], -1)  # noqa: E731
    family = NormalizingFlow(encoder, z_dim=d, num_flows=2, hidden_dims=(8,), init_identity=False)
    with torch.no_grad():
        for flow in family.flows:  # make the flows far from the identity
            flow.nn.layers[-1].weight.normal_(0, 0.5)
    x = torch.randn(1, 5)
    loc, log_var, context = (t.detach() for t in encoder(x))

    def f(eps):
        """ε -> z: the base's affine map, then the flows and the reversal, applied by hand."""
        z = loc[0] + torch.exp(0.5 * log_var[0]) * eps
        for k, flow in enumerate(family.flows):
            if k:
                z = z.flip(-1)
            z = flow.condition(context[0])(z)
        return z.flip(-1) if len(family.flows) % 2 == 0 else z

    for seed in range(3):
        eps = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            z = f(eps)
        jac = torch.autograd.functional.jacobian(f, eps)
        by_hand = dist.Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac).logabsdet
        q = family(x)  # a fresh distribution: its log_prob inverts the flow, no cached value
        assert q.log_prob(z.unsqueeze(0)).item() == pytest.approx(by_hand.item(), abs=1e-4)


@pytest.mark.parametrize("num_flows", [1, 2, 3])
def test_flow_log_density_at_its_own_sample_inverts_nothing(num_flows, monkeypatch):
    """At the sample it drew, the flow's log q walks back through each transform's kept
    (input, output) pair (Pyro's ``cache_size=1``) down to the base's z₀: no autoregressive
    inversion, and the same value and gradients as inverting the flow afresh."""
    torch.manual_seed(4)
    d, c = 3, NormalizingFlow.context_dim
    head = nn.Linear(5, 2 * d + c)
    encoder = lambda x: head(x).split([d, d, c], -1)  # noqa: E731
    family = NormalizingFlow(encoder, z_dim=d, num_flows=num_flows, hidden_dims=(8,), init_identity=False)
    x = torch.randn(4, 5)
    q = family(x)
    z = q.rsample()
    fresh = family(x).log_prob(z.detach())  # a new distribution: inverts the flows
    inverse = type(q.transforms[0])._inverse
    monkeypatch.setattr(type(q.transforms[0]), "_inverse", lambda self, y: pytest.fail("inverted a flow"))
    lp = q.log_prob(z)
    monkeypatch.setattr(type(q.transforms[0]), "_inverse", inverse)
    assert torch.allclose(lp, fresh, atol=1e-4)
    # the same parameter gradients as Pyro's general route (a z detached from the kept pairs)
    params = list(head.parameters()) + list(family.flows.parameters())
    g_ours = torch.autograd.grad(lp.sum(), params, retain_graph=True, allow_unused=True)
    lp_general = q.log_prob(z + 0.0)  # a new tensor: each transform inverts it
    g_general = torch.autograd.grad(lp_general.sum(), params, allow_unused=True)
    assert torch.allclose(lp, lp_general, atol=1e-4)
    for a, b in zip(g_ours, g_general):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-4))


def test_flow_starts_as_its_diagonal_base():
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(16,), guide="flow")
    x = _binary_data(4).x
    loc, log_var, _ = vae.q.encoder(x)
    q = vae.encode(x)
    z = q.sample()
    base = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
    assert torch.allclose(q.log_prob(z), base.log_prob(z), atol=1e-5)


# ---- the linear-Gaussian model: a correlated posterior in closed form -----------------------
def true_posterior(x=X[0]):
    """p(z|x) = N(Σ Wᵀ x / σ², Σ), Σ = (I + Wᵀ W / σ²)⁻¹."""
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / SIGMA**2)
    return dist.MultivariateNormal(cov @ W.T @ x / SIGMA**2, covariance_matrix=cov)


def _fit_single_point(vae, steps=300, lr=0.05, particles=16):
    objective = make_objective("elbo", particles)
    opt = torch.optim.Adam(vae.q.parameters(), lr=lr)  # the decoder (W) stays fixed
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        objective.differentiable_loss(vae.model, vae.guide, X).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        q = vae.encode(X)
        return (
            dist.MultivariateNormal(q.mean[0], covariance_matrix=q.covariance_matrix[0])
            if isinstance(q, dist.MultivariateNormal)
            else dist.MultivariateNormal(q.mean[0], covariance_matrix=torch.diag(q.variance[0]))
        )


def test_full_guide_recovers_the_correlated_posterior_and_the_diagonal_cannot():
    p = true_posterior()
    rho = p.covariance_matrix[0, 1] / p.covariance_matrix.diagonal().prod().sqrt()
    assert rho < -0.7  # the test is only meaningful for a strongly correlated posterior
    # the best diagonal Gaussian (exclusive KL): the true mean, variances 1/Λ_jj, and
    # KL_min = ½ (Σ_j log Λ_jj − log det Λ) = −½ log(1 − ρ²) for d = 2
    kl_min_diagonal = -0.5 * math.log(1 - rho.item() ** 2)

    q_full = _fit_single_point(linear_gaussian_vae("full"))
    q_diag = _fit_single_point(linear_gaussian_vae("diagonal"))
    kl_full = kl_divergence(q_full, p).item()
    kl_diag = kl_divergence(q_diag, p).item()
    # full: within 0.02 nats of the truth, and every covariance entry within 10% of the variances
    assert kl_full < 0.02
    scale = p.covariance_matrix.diagonal().max()
    assert (q_full.covariance_matrix - p.covariance_matrix).abs().max() < 0.1 * scale
    assert (q_full.mean - p.mean).abs().max() < 0.1 * scale.sqrt()
    # diagonal: no diagonal Gaussian gets below KL_min (closed form); the fitted one reaches it
    assert kl_diag >= kl_min_diagonal - 1e-4
    assert kl_diag == pytest.approx(kl_min_diagonal, abs=0.03)
    assert kl_diag > kl_full + 0.3


# ---- training: every family with every objective, a user's own family, the CVAE -----------------
@pytest.mark.parametrize("objective", ["elbo", "meanfield", "iwae"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_with_every_objective(name, objective):
    train = _binary_data(200)
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(32,), guide=name)
    history = fit(
        vae,
        train,
        epochs=4,
        objective=objective,
        particles=3 if objective == "iwae" else 1,
        batch_size=50,
        lr=1e-2,
        progress=False,
    )
    losses = history.train_loss
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 3.0, losses  # from ≈ 44 nats down: it learns


class LowRankNormal(nn.Module):
    """A user's own family: q(z|x) = N(μ, D + V Vᵀ), rank-one V (Pyro's LowRankMultivariateNormal)."""

    def __init__(self, encoder, z_dim=None):
        super().__init__()
        self.encoder, self.z_dim = encoder, z_dim

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim, z_dim, z_dim)

    def forward(self, x):
        loc, log_var, factor = self.encoder(x)
        return dist.LowRankMultivariateNormal(loc, factor.unsqueeze(-1), log_var.exp())


def test_a_users_own_family_plugs_in_as_a_class():
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(32,), guide=LowRankNormal)
    assert vae.config["guide"] == "LowRankNormal"
    q = vae.encode(_binary_data(4).x)
    assert isinstance(q, dist.LowRankMultivariateNormal) and q.batch_shape == (4,)
    history = fit(
        vae, _binary_data(200), epochs=4, batch_size=50, lr=1e-2, objective="iwae", particles=3, progress=False
    )
    assert history.train_loss[-1] < history.train_loss[0] - 5.0
    # a run folder rebuilds it once the class is registered by name
    GUIDES["lowrank"] = LowRankNormal
    try:
        config = dict(vae.config, guide="lowrank")
        assert isinstance(build_model(config).q, LowRankNormal)
    finally:
        del GUIDES["lowrank"]


@pytest.mark.parametrize("name", ["full", "flow"])
def test_conditional_vae_takes_the_families(name):
    model = build_model(dict(model="cvae", image_shape=[1, 8, 8], z_dim=3, hidden_dims=[16], guide=name))
    x, c = _binary_data(6).x, torch.arange(6) % 10
    assert isinstance(model.q, guide_family(name))
    loss = make_objective("elbo").differentiable_loss(model.model, model.guide, x, c)
    loss.backward()
    assert torch.isfinite(loss)
    assert make_objective("iwae", 4).loss(model.model, model.guide, x, c) > 0


# ---- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["full", "flow"])
def test_cli_trains_with_guide(tmp_path, name):
    out = tmp_path / name
    assert (
        main(
            [
                "train",
                "--guide",
                name,
                "--epochs",
                "1",
                "--z-dim",
                "3",
                "--hidden",
                "32",
                "--binarize",
                "dynamic",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["guide"] == name
    model, _ = load_run(out)
    assert isinstance(model.q, guide_family(name))
    assert (out / "reconstructions.png").is_file()
    # the checkpoint holds the whole family (the flow's random MADE orderings too): two loads
    # under different seeds give the same density
    torch.manual_seed(123)
    other, _ = load_run(out)
    x = _binary_data(3).x
    with torch.no_grad():
        z = model.encode(x).sample()
        assert torch.allclose(model.encode(x).log_prob(z), other.encode(x).log_prob(z), atol=1e-5)


def test_cli_names_an_unknown_guide(tmp_path, capsys):
    assert (
        exit_code(["train", "--guide", "cholesky", "--epochs", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert "argument --guide: invalid choice: 'cholesky'" in err and "'flow'" in err and "'full'" in err


def test_diagonal_family_is_unchanged():
    assert guide_family("diagonal") is DiagonalNormal
    assert DiagonalNormal.encoder_out_dims(4) == (4, 4)


def test_diagonal_family_builds_normal_of_the_encoders_mean_and_half_log_variance():
    """q(z|x) = N(μ(x), diag exp(log σ²(x))): Pyro's Normal made an event of one dimension,
    reparameterized, with loc and scale exactly the encoder's μ and exp(½ log σ²)."""
    torch.manual_seed(0)
    head = nn.Linear(6, 6)
    family = DiagonalNormal(lambda x: head(x).split([3, 3], -1), z_dim=3)
    x = torch.randn(4, 6)
    q = family(x)
    loc, log_var = head(x).split([3, 3], -1)
    assert type(q) is dist.Independent and type(q.base_dist) is dist.Normal
    assert q.batch_shape == (4,) and q.event_shape == (3,) and q.has_rsample
    assert torch.equal(q.base_dist.loc, loc) and torch.allclose(q.base_dist.scale, torch.exp(0.5 * log_var))
    z = torch.randn(4, 3)
    expected = torch.distributions.Normal(loc, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    assert torch.allclose(q.log_prob(z), expected)
