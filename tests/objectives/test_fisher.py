"""The Fisher autoencoder objective (pyro_vae.objectives.fisher) against closed forms.

Probabilistic PCA with a linear Gaussian encoder makes every score analytic:

    p(z) = N(0, I_d),  p(x|z) = N(Wz + b, diag s²),  q(z|x) = N(Ax + c, diag τ²).

With ξ = (x, ε) ~ N((m, 0), blockdiag(Σ, I)) and z = Ax + c + τ ⊙ ε, every score is affine
in ξ, so each expected squared norm is tr(M S Mᵀ) + ‖M m + y₀‖² (computed here with plain
linear algebra, not through Pyro). Monte Carlo means are compared with their targets within
Z standard errors (sample sd / sqrt(R)).
"""

import math

import pyro
import pytest
import torch
from run_helpers import exit_code
from torch import nn

from pyro_vae import build_vae, make_objective
from pyro_vae.likelihoods import Gaussian
from pyro_vae.models import VAE, build_autoencoder
from pyro_vae.objectives.fisher import FisherDivergence

Z = 5.0  # standard errors; P(|N(0,1)| > 5) ≈ 6e-7 per comparison
D, d = 5, 2


class LinearGaussianEncoder(nn.Module):
    """x -> (Ax + c, log τ²): the pPCA guide's encoder, a constant variance."""

    def __init__(self, x_dim, z_dim):
        super().__init__()
        self.lin = nn.Linear(x_dim, z_dim)
        self.log_var = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x):
        loc = self.lin(x)
        return loc, self.log_var.expand_as(loc)


def ppca(seed=0, scale=None, W=None, b=None, A=None, c=None, log_var=None):
    """A float64 pPCA VAE with random (or given) parameters; a learned per-pixel scale
    if ``scale`` is None."""
    g = torch.Generator().manual_seed(seed)
    enc, dec = LinearGaussianEncoder(D, d), nn.Linear(d, D)
    lik = Gaussian(D, scale=scale, init_scale=0.7)
    vae = VAE(enc, dec, d, likelihood=lik).double()
    with torch.no_grad():
        dec.weight.copy_(W if W is not None else torch.randn(D, d, generator=g, dtype=torch.float64))
        dec.bias.copy_(b if b is not None else 0.3 * torch.randn(D, generator=g, dtype=torch.float64))
        enc.lin.weight.copy_(A if A is not None else 0.4 * torch.randn(d, D, generator=g, dtype=torch.float64))
        enc.lin.bias.copy_(c if c is not None else 0.2 * torch.randn(d, generator=g, dtype=torch.float64))
        enc.log_var.copy_(log_var if log_var is not None else torch.tensor([-1.0, -0.5], dtype=torch.float64))
    return vae


def params(vae):
    W, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    A, c = vae.q.encoder.lin.weight.detach(), vae.q.encoder.lin.bias.detach()
    tau = (0.5 * vae.q.encoder.log_var.detach()).exp()
    s = vae.likelihood.scale.detach()
    return W, b, A, c, tau, s


def analytic_terms(vae, x, z):
    """The terms of J at given (x, z), from the pPCA formulas."""
    W, b, A, c, tau, s = params(vae)
    r = x - z @ W.T - b
    a = -(z - x @ A.T - c) / tau**2  # ∂_z log q(z|x)
    bz = -z + (r / s**2) @ W  # ∂_z log p(x, z)
    v = -r / s**2  # ∂_x log p(x, z)
    u = ((z - x @ A.T - c) / tau**2) @ A  # ∂_x log q(z|x)
    return {
        "latent": 0.5 * (a - bz).pow(2).sum(-1),
        "decoder": 0.5 * v.pow(2).sum(-1),
        "laplacian": -(1 / s**2).sum().expand(x.shape[0]),
        "encoder": 0.5 * u.pow(2).sum(-1),
    }


def affine_maps(vae):
    """Each score as M ξ + y₀, ξ = (x, ε): returns {name: (M, y0)} for a − b, v, u, and r."""
    W, b, A, c, tau, s = params(vae)
    eye_x, zeros = torch.eye(D, dtype=W.dtype), torch.zeros(d, D, dtype=W.dtype)
    Zm, z0 = torch.cat([A, torch.diag(tau)], 1), c  # z = Zm ξ + z0
    Rm, r0 = torch.cat([eye_x, torch.zeros(D, d, dtype=W.dtype)], 1) - W @ Zm, -W @ c - b
    Em = torch.cat([zeros, -torch.diag(1 / tau)], 1)  # ∂_z log q = −ε/τ
    T = torch.diag(1 / s**2)
    a_minus_b = (Em + Zm - W.T @ T @ Rm, z0 - W.T @ T @ r0)
    v = (-T @ Rm, -T @ r0)
    u = (torch.cat([torch.zeros(D, D, dtype=W.dtype), A.T @ torch.diag(1 / tau)], 1), torch.zeros(D, dtype=W.dtype))
    return {"a_minus_b": a_minus_b, "v": v, "u": u, "r": (Rm, r0), "e_plus_z": (Em + Zm, z0)}


def expected_sq(M, y0, mean, cov):
    mu = M @ mean + y0
    return torch.trace(M @ cov @ M.T) + mu @ mu


def xi_moments(m, Sigma):
    mean = torch.cat([m, torch.zeros(d, dtype=m.dtype)])
    cov = torch.block_diag(Sigma, torch.eye(d, dtype=m.dtype))
    return mean, cov


def closed_form_objective(vae, m, Sigma):
    """E_{p_d q}[J] for p_d = N(m, Σ): ½E‖a−b‖² + ½E‖v‖² − Σ 1/s² + ½E‖u‖²."""
    maps = affine_maps(vae)
    mean, cov = xi_moments(m, Sigma)
    s = params(vae)[-1]
    return (
        0.5 * expected_sq(*maps["a_minus_b"], mean, cov)
        + 0.5 * expected_sq(*maps["v"], mean, cov)
        - (1 / s**2).sum()
        + 0.5 * expected_sq(*maps["u"], mean, cov)
    )


def data_distribution():
    g = torch.Generator().manual_seed(7)
    L = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.5 + torch.eye(D, dtype=torch.float64)
    return 0.5 * torch.randn(D, generator=g, dtype=torch.float64), L @ L.T, L


def sample_data(n, seed=1):
    m, Sigma, L = data_distribution()
    g = torch.Generator().manual_seed(seed)
    return m + torch.randn(n, D, generator=g, dtype=torch.float64) @ L.T


# ---- item 2: closed forms --------------------------------------------------------------
def test_every_term_equals_the_ppca_closed_form_at_the_drawn_z():
    vae = ppca(scale=None)
    x = sample_data(16)
    terms = FisherDivergence().terms(vae.model, vae.guide, x)
    expected = analytic_terms(vae, x, terms["z"]["z"])
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, rtol=1e-10, atol=1e-10), name
    total = sum(expected.values())
    assert torch.allclose(terms["total"], total, rtol=1e-10, atol=1e-10)
    assert terms["scale"] == 1.0


def test_monte_carlo_objective_equals_the_closed_form_expectation():
    vae = ppca(scale=None)
    m, Sigma, _ = data_distribution()
    n = 20000
    x = sample_data(n)
    total = FisherDivergence().terms(vae.model, vae.guide, x)["total"].detach()
    mc, se = total.mean(), total.std() / math.sqrt(n)
    exact = closed_form_objective(vae, m, Sigma)
    assert abs(mc - exact) < Z * se, (mc.item(), exact.item(), se.item())
    assert se < 0.05 * abs(exact)  # the comparison has power


def test_at_the_true_model_and_posterior_the_loss_is_minus_the_data_fisher_constant():
    """Data from pPCA, decoder at the truth and the guide the exact posterior (W with
    orthogonal columns, so the posterior covariance is diagonal): q(x, z) = p(x, z), F = 0,
    and E[J] = −C = −½ E‖∇ log p_d‖² = −½ tr(Σ_x⁻¹), Σ_x = W Wᵀ + s² I."""
    s = 0.6
    Q, _ = torch.linalg.qr(torch.randn(D, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    W = Q * torch.tensor([2.0, 1.0], dtype=torch.float64)
    b = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
    post_cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + W.T @ W / s**2)  # diagonal
    A = post_cov @ W.T / s**2
    vae = ppca(scale=s, W=W, b=b, A=A, c=-A @ b, log_var=torch.diagonal(post_cov).log())
    Sigma_x = W @ W.T + s**2 * torch.eye(D, dtype=torch.float64)
    exact = -0.5 * torch.trace(torch.linalg.inv(Sigma_x))
    assert torch.allclose(closed_form_objective(vae, b, Sigma_x), exact, rtol=1e-10)
    n = 20000
    x = (
        b
        + torch.randn(n, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        @ torch.linalg.cholesky(Sigma_x).T
    )
    total = FisherDivergence().terms(vae.model, vae.guide, x)["total"].detach()
    mc, se = total.mean(), total.std() / math.sqrt(n)
    assert abs(mc - exact) < Z * se, (mc.item(), exact.item(), se.item())


def scale_minimizer_closed_form(vae, m, Sigma):
    """Minimizer over the per-pixel precisions t = 1/s² with everything else fixed.

    J(t) = ½‖g − Wᵀ diag(t) r‖² + ½ Σ t_i² r_i² − Σ t_i + const, g = ∂_z log q + z, so
    E J is quadratic in t and its minimizer solves (E[(W Wᵀ) ∘ r rᵀ] + diag E[r²]) t = 1 + h,
    h_i = E[r_i (W g)_i]."""
    maps = affine_maps(vae)
    mean, cov = xi_moments(m, Sigma)
    W = params(vae)[0]
    (Rm, r0), (Gm, g0) = maps["r"], maps["e_plus_z"]
    WG, Wg0 = W @ Gm, W @ g0
    mu_r, mu_wg = Rm @ mean + r0, WG @ mean + Wg0
    Err = Rm @ cov @ Rm.T + torch.outer(mu_r, mu_r)
    h = torch.diagonal(Rm @ cov @ WG.T) + mu_r * mu_wg
    H = (W @ W.T) * Err + torch.diag(torch.diagonal(Err))
    return torch.linalg.solve(H, 1 + h), H


def test_minimizer_over_the_decoder_scale_is_where_the_closed_form_says():
    """Fit the likelihood's per-pixel scale alone (L-BFGS on log s, same draws ε at every
    evaluation); the minimizer t̂ = 1/ŝ² must match the closed form t* within Z standard
    errors of the sample minimizer (delta method: t̂ − t* ≈ H⁻¹ mean_n ψ_n). The data are
    not from the model (Σ is no W Wᵀ + s² I), so t* is no "true" value; the encoder is the
    exact posterior of the model at s = 0.7, and the decoder mean passes through the data's."""
    m, Sigma, _ = data_distribution()
    W = torch.randn(D, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    post = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + W.T @ W / 0.7**2)
    A = post @ W.T / 0.7**2
    vae = ppca(scale=None, W=W, b=m, A=A, c=-A @ m, log_var=torch.diagonal(post).log())
    t_star, H = scale_minimizer_closed_form(vae, m, Sigma)
    assert (t_star > 0).all()
    n = 8000
    x = sample_data(n, seed=5)
    objective = FisherDivergence()
    opt = torch.optim.LBFGS(
        [vae.likelihood.log_scale],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        pyro.set_rng_seed(11)  # common random numbers: the same ε every evaluation
        loss = objective.differentiable_loss(vae.model, vae.guide, x) / n
        loss.backward()
        return loss

    opt.step(closure)
    t_hat = vae.likelihood.scale.detach().pow(-2)
    # the per-sample influence ψ_n at t*, from the same draws
    pyro.set_rng_seed(11)
    z = objective.terms(vae.model, vae.guide, x, create_graph=False)["z"]["z"]
    W, b, A, c, tau, _ = params(vae)
    r = x - z @ W.T - b
    g = -(z - x @ A.T - c) / tau**2 + z
    psi = r * (g @ W.T) - (r * ((r * t_star) @ (W @ W.T))) - r**2 * t_star
    cov_psi = torch.cov(psi.T)
    Hinv = torch.linalg.inv(H)
    se = torch.sqrt(torch.diagonal(Hinv @ cov_psi @ Hinv.T) / n)
    assert ((t_hat - t_star).abs() < Z * se).all(), (t_hat, t_star, se)
    assert (se < 0.1 * t_star).all()  # the comparison has power


def test_hutchinson_equals_the_exact_laplacian_for_a_diagonal_hessian():
    """A factorised Gaussian has a diagonal Hessian in x, so the Rademacher estimator
    εᵀ H ε = Σ_i H_ii ε_i² = tr H has no variance: it must equal −Σ 1/s² exactly."""
    vae = ppca(scale=None)
    x = sample_data(8)
    pyro.set_rng_seed(2)
    exact = FisherDivergence(laplacian="exact").terms(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    hutch = FisherDivergence(laplacian="hutchinson", num_probes=3).terms(vae.model, vae.guide, x)
    assert torch.allclose(hutch["laplacian"], exact["laplacian"], rtol=1e-12)
    assert torch.allclose(hutch["total"], exact["total"], rtol=1e-12)


# ---- item 5: shapes, particles, gradients, refusals ----------------------------------------
def tiny_gaussian_vae():
    torch.manual_seed(0)
    return build_vae((1, 3, 4), z_dim=3, hidden_dims=(16,), likelihood="gaussian")


def test_loss_is_the_batch_sum_scaled_by_the_plate_and_averaged_over_particles():
    x = torch.rand(6, 12)
    vae = tiny_gaussian_vae()
    objective = FisherDivergence()
    pyro.set_rng_seed(0)
    terms = objective.terms(vae.model, vae.guide, x)
    assert terms["total"].shape == (6,) and terms["scale"] == 1.0
    pyro.set_rng_seed(0)
    assert objective.loss(vae.model, vae.guide, x) == pytest.approx(terms["total"].sum().item(), rel=1e-6)
    # a minibatch of 6 standing for 60 points: × 10
    pyro.set_rng_seed(0)
    terms = objective.terms(vae.model, vae.guide, x, num_data=60)
    assert terms["scale"] == 10.0
    pyro.set_rng_seed(0)
    scaled = objective.differentiable_loss(vae.model, vae.guide, x, num_data=60)
    assert scaled.dim() == 0
    assert scaled.item() == pytest.approx(10 * terms["total"].sum().item(), rel=1e-6)
    # L particles: the mean of L one-particle losses drawn in sequence
    pyro.set_rng_seed(1)
    three = FisherDivergence(num_particles=3).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    singles = [objective.loss(vae.model, vae.guide, x) for _ in range(3)]
    assert three == pytest.approx(sum(singles) / 3, rel=1e-6)
    assert len(set(singles)) == 3  # the particles are different draws
    for batch in (1, 4):
        assert math.isfinite(objective.loss(vae.model, vae.guide, x[:batch]))


def test_gradient_reaches_encoder_decoder_and_likelihood():
    vae = tiny_gaussian_vae()
    loss = make_objective("fisher", num_particles=2).differentiable_loss(
        vae.model, vae.guide, torch.rand(5, 12), num_data=100
    )
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bernoulli_likelihood_is_refused_naming_the_alternatives():
    vae = build_vae((1, 3, 4), z_dim=3, hidden_dims=(16,), likelihood="bernoulli")
    with pytest.raises(ValueError, match="discrete") as err:
        make_objective("fisher").loss(vae.model, vae.guide, (torch.rand(4, 12) < 0.5).float())
    assert "gaussian" in str(err.value) and "ELBO" in str(err.value)


def test_bad_settings_and_guides_are_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_particles"):
            FisherDivergence(num_particles=bad)
    with pytest.raises(ValueError, match="laplacian"):
        FisherDivergence(laplacian="diagonal")
    with pytest.raises(ValueError, match="num_probes"):
        FisherDivergence(num_probes=0)
    x = torch.rand(4, 12)
    ae = build_autoencoder((1, 3, 4), z_dim=3, hidden_dims=(16,), likelihood="gaussian")
    with pytest.raises(ValueError, match="point mass"):
        FisherDivergence().loss(ae.model, ae.guide, x)
    sf = build_vae(
        (1, 3, 4), z_dim=3, hidden_dims=(16,), likelihood="gaussian", guide_kwargs={"reparameterized": False}
    )
    with pytest.raises(ValueError, match="reparameterized"):
        FisherDivergence().loss(sf.model, sf.guide, x)
    vae = tiny_gaussian_vae()
    with pytest.raises(ValueError, match="floating-point"):
        FisherDivergence().loss(vae.model, vae.guide, torch.ones(4, 12, dtype=torch.int64))


# ---- item 3: training from Python and the command line --------------------------------------
def test_cli_trains_with_the_fisher_objective_and_refuses_bernoulli(tmp_path, capsys):
    out = tmp_path / "run"
    code = exit_code(
        [
            "train",
            "--dataset",
            "digits",
            "--objective",
            "fisher",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--z-dim",
            "4",
            "--batch-size",
            "256",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "checkpoint.pt").is_file() and (out / "samples.png").is_file()
    history = __import__("json").loads((out / "run.json").read_text())
    assert history["train"]["objective"] == "fisher"
    code = exit_code(
        [
            "train",
            "--dataset",
            "digits",
            "--objective",
            "fisher",
            "--binarize",
            "static",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--z-dim",
            "4",
            "--no-progress",
            "--out",
            str(tmp_path / "bern"),
        ]
    )
    assert code == 2
    assert "discrete" in capsys.readouterr().err
