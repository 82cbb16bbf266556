"""Importance-sampled log-likelihood, IWAE bounds and active units (issue #5), checked
against exact oracles:

- a binary latent z ∈ {0,1}^k with a Bernoulli decoder, log p(x) by enumerating all 2^k
  values of z; the estimate must fall within a few standard errors computed from the
  exact variance of the importance weights, which shrink as 1/√K;
- probabilistic PCA (a linear-Gaussian VAE), whose log p(x) and ELBO are closed-form;
  L_1 ≤ L_5 ≤ L_50 ≤ log p(x) in expectation, checked with standard errors.
"""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from run_helpers import exit_code
from torch import nn

from pyro_vae.cli import main
from pyro_vae.eval.likelihood import (
    active_units,
    elbo,
    importance_sampling,
    iwae_bound,
    likelihood_report,
    log_likelihood,
)
from pyro_vae.likelihoods import Bernoulli, Gaussian
from pyro_vae.models import VAE
from pyro_vae.objectives import IWAE_ELBO

LOG_2PI = math.log(2 * math.pi)


# ---- oracle 1: a binary latent, enumerated ---------------------------------------------
class BinaryLatent(PyroModule):
    r"""z ∈ {0,1}^k, p(z_j = 1) = π_j; x | z ~ Π_i Bernoulli(σ((W z + b)_i)), i = 1..D;
    guide q(z | x) = Π_j Bernoulli(σ((A x + a)_j)), deliberately not the posterior."""

    def __init__(self, k=4, D=10, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pi = torch.rand(k, generator=g) * 0.6 + 0.2
        self.W = torch.randn(D, k, generator=g) * 2.0
        self.b = torch.randn(D, generator=g)
        self.A = torch.randn(k, D, generator=g) * 0.5
        self.a = torch.randn(k, generator=g) * 0.5
        self.k, self.D, self.num_data = k, D, None

    def plate(self, b):
        return pyro.plate("data", self.num_data or b, subsample_size=b)

    def model(self, x):
        with self.plate(x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(probs=self.pi).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ self.W.T + self.b).to_event(1), obs=x)

    def guide(self, x):
        with self.plate(x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=x @ self.A.T + self.a).to_event(1))

    def all_z(self):
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.k)))  # (2^k, k)

    def log_joint_all_z(self, x):
        """log p(x, z) for every z: ``(2^k, N)``."""
        z = self.all_z()
        log_pz = dist.Bernoulli(probs=self.pi).log_prob(z).sum(-1)  # (2^k,)
        logits = z @ self.W.T + self.b  # (2^k, D)
        log_px_z = dist.Bernoulli(logits=logits[:, None, :]).log_prob(x[None]).sum(-1)  # (2^k, N)
        return log_pz[:, None] + log_px_z

    def exact_log_px(self, x):
        """log p(x) = log Σ_z p(z) p(x|z), by brute force over the 2^k values of z."""
        return torch.logsumexp(self.log_joint_all_z(x), 0)

    def exact_relative_variance(self, x):
        """Var_q(w) / p(x)², w = p(x, z) / q(z|x), exactly: Σ_z p(x,z)²/q(z|x) / p(x)² − 1."""
        z = self.all_z()
        log_q = dist.Bernoulli(logits=(x @ self.A.T + self.a)[None]).log_prob(z[:, None, :]).sum(-1)
        log_joint = self.log_joint_all_z(x)
        return torch.exp(torch.logsumexp(2 * log_joint - log_q, 0) - 2 * self.exact_log_px(x)) - 1


def test_the_enumeration_oracle_is_a_distribution():
    """The brute-force log p(x) sums to one over all 2^D images (D = 6): the oracle is right."""
    m = BinaryLatent(k=3, D=6)
    x_all = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)))
    assert torch.logsumexp(m.exact_log_px(x_all), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_log_likelihood_converges_to_the_enumerated_value():
    """|log p̂_K(x) − log p(x)| ≤ 4 SE_K + r/K with SE_K = sqrt(r / K), r = Var_q(w)/p(x)² exact
    (the delta method; r/K bounds the O(1/K) bias); and SE_K shrinks as 1/√K."""
    m = BinaryLatent()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, m.D, generator=g) < 0.4).float()
    exact = m.exact_log_px(x).double()
    r = m.exact_relative_variance(x).double()
    assert (r > 0.5).all()  # a poor guide: the test has something to detect
    errors = {}
    for K in (50, 20000):
        pyro.set_rng_seed(K)
        est, se = log_likelihood(m, x, num_samples=K, chunk_size=5000, return_stderr=True)
        assert est.shape == (6,)
        tol = 4 * (r / K).sqrt() + r / K
        assert ((est - exact).abs() <= tol).all(), (K, est - exact, tol)
        errors[K] = (est - exact).abs().max().item()
        if K == 20000:  # the reported standard error is the delta-method one, close to the exact
            assert torch.allclose(se, (r / K).sqrt(), rtol=0.3)
    assert errors[20000] < 4 * ((r / 20000).sqrt() + r / 20000).max().item()
    # and the tolerance is much tighter at the larger K: it is a convergence check
    assert (4 * (r / 20000).sqrt()).max() < (4 * (r / 50).sqrt()).min() / 5


def test_ragged_batches_and_chunks_give_the_same_answer():
    """Batches and chunks that do not divide N and K are combined exactly (running
    log-sum-exp): the estimate still meets the oracle's tolerance."""
    m = BinaryLatent()
    x = (torch.rand(7, m.D, generator=torch.Generator().manual_seed(3)) < 0.4).float()
    exact = m.exact_log_px(x).double()
    r = m.exact_relative_variance(x).double()
    K = 3000
    pyro.set_rng_seed(4)
    est = log_likelihood(m, x, num_samples=K, batch_size=3, chunk_size=170)
    assert ((est - exact).abs() <= 4 * (r / K).sqrt() + r / K).all()


def test_the_estimate_is_not_the_elbo():
    """A wrong estimator (the mean log weight, the ELBO) fails the same tolerance."""
    m = BinaryLatent()
    x = (torch.rand(6, m.D, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    exact = m.exact_log_px(x).double()
    r = m.exact_relative_variance(x).double()
    pyro.set_rng_seed(0)
    wrong = elbo(m, x, num_samples=20000, chunk_size=5000)
    assert ((exact - wrong) > 4 * (r / 20000).sqrt() + r / 20000).all()


# ---- oracle 2: probabilistic PCA -------------------------------------------------------
class GaussianEncoder(nn.Module):
    """x -> (loc, log_var): a fixed affine map for the mean and a constant variance."""

    def __init__(self, M, c, log_var):
        super().__init__()
        self.register_buffer("M", M)
        self.register_buffer("c", c)
        self.register_buffer("log_var", log_var)

    def forward(self, x):
        return x @ self.M.T + self.c, self.log_var.expand(x.shape[0], -1)


def ppca(D=5, d=2, sigma=0.5, seed=0):
    r"""pPCA as a VAE: z ~ N(0, I_d), x | z ~ N(W z + μ, σ² I_D) (a linear decoder and the
    Gaussian likelihood with a fixed scale). The guide is the exact posterior mean shifted
    by 0.3 with an isotropic variance 1.5 × the posterior's largest (so q covers the
    posterior and the weights have a finite variance): a Gaussian, but not the posterior."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, d, generator=g)
    mu = torch.randn(D, generator=g)
    decoder = nn.Linear(d, D)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(mu)
    prec = torch.eye(d) + W.T @ W / sigma**2  # posterior precision
    post_cov = torch.linalg.inv(prec)
    M = post_cov @ W.T / sigma**2  # posterior mean = M (x − μ)
    var = 1.5 * torch.linalg.eigvalsh(post_cov).max()
    encoder = GaussianEncoder(M, -M @ mu + 0.3, torch.full((d,), float(var.log())))
    vae = VAE(encoder, decoder, z_dim=d, likelihood=Gaussian(D, scale=sigma))
    marginal = dist.MultivariateNormal(mu, W @ W.T + sigma**2 * torch.eye(D))  # p(x), closed form
    truth = dict(W=W, mu=mu, sigma=sigma, marginal=marginal)
    return vae, truth


def closed_form_elbo(vae, truth, x):
    r"""ELBO = E_q[log p(x|z)] + E_q[log p(z)] + H[q] for q = N(m, diag s²):
    −D/2 log 2πσ² − (‖x − W m − μ‖² + tr(W diag s² Wᵀ)) / 2σ² − d/2 log 2π − (‖m‖² + Σ s²)/2
    + d/2 log 2πe + Σ log s."""
    W, mu, sigma = truth["W"], truth["mu"], truth["sigma"]
    m, log_var = vae.q.encoder(x)
    s2 = log_var.exp()
    D, d = W.shape
    resid = x - m @ W.T - mu
    trace = (W.pow(2) * s2[:, None, :]).sum((-2, -1))  # tr(W diag s² Wᵀ)
    rec = -0.5 * D * math.log(2 * math.pi * sigma**2) - (resid.pow(2).sum(-1) + trace) / (2 * sigma**2)
    prior = -0.5 * d * LOG_2PI - 0.5 * (m.pow(2).sum(-1) + s2.sum(-1))
    entropy = 0.5 * d * (LOG_2PI + 1) + 0.5 * log_var.sum(-1)
    return (rec + prior + entropy).double()


@pytest.fixture
def ppca_data():
    vae, truth = ppca()
    x = truth["marginal"].sample((4,))
    return vae, truth, x


def test_ppca_log_likelihood_and_elbo_match_the_closed_forms(ppca_data):
    vae, truth, x = ppca_data
    exact = truth["marginal"].log_prob(x).double()
    pyro.set_rng_seed(0)
    stats = importance_sampling(vae, x, num_samples=20000, chunk_size=5000)
    err = stats["log_px"] - exact
    se = stats["log_px_stderr"]
    assert (err.abs() <= 4 * se + se**2).all(), (err, se)
    assert (se < 0.02).all()  # and the standard error is small: the check is tight
    elbo_exact = closed_form_elbo(vae, truth, x)
    assert ((stats["elbo"] - elbo_exact).abs() <= 4 * stats["elbo_stderr"]).all()
    assert ((exact - elbo_exact) > 0.1).all()  # KL(q ‖ p(z|x)) > 0: the guide is not the posterior


def test_ppca_iwae_bounds_increase_with_K_towards_log_px(ppca_data):
    """L_1 ≤ L_5 ≤ L_50 ≤ log p(x) in expectation: each L_K estimated by the mean of many
    independent K-sample estimates; the gaps are tested against 3 standard errors (the
    sum of the two SEs bounds the SE of a difference)."""
    vae, truth, x = ppca_data
    exact = truth["marginal"].log_prob(x).double()
    pyro.set_rng_seed(1)
    s = importance_sampling(vae, x, num_samples=20000, ks=(1, 5, 50), chunk_size=5000)
    L1, L5, L50 = s["iwae_1"], s["iwae_5"], s["iwae_50"]
    se1, se5, se50 = s["iwae_1_stderr"], s["iwae_5_stderr"], s["iwae_50_stderr"]
    assert torch.allclose(L1, s["elbo"])
    assert ((L5 - L1) > 3 * (se1 + se5)).all(), (L5 - L1, se1 + se5)
    assert ((L50 - L5) > 3 * (se5 + se50)).all(), (L50 - L5, se5 + se50)
    assert ((exact - L50) > -3 * se50).all(), (exact - L50, se50)
    # the one-draw estimator of iwae_bound is an unbiased draw of L_K
    pyro.set_rng_seed(2)
    one, se_one = iwae_bound(vae, x, K=5, num_samples=5000, chunk_size=5000, return_stderr=True)
    assert ((one - L5).abs() <= 4 * (se_one + se5)).all()


# ---- any Pyro model and guide: the guide passed is the guide used ------------------------
def ppca_pyro_program(truth):
    r"""The pPCA of :func:`ppca` written as a Pyro user writes a model, with the exact
    posterior as the user's own guide:

        p(z) = N(0, I),  p(x|z) = N(W z + μ, σ² I),  p(z|x) = N(M (x − μ), Σ),
        Σ = (I + WᵀW/σ²)⁻¹,  M = Σ Wᵀ/σ².

    Then every importance weight p(x, z)/q(z|x) = p(x) exactly, whatever z: log p̂_K(x) =
    log p(x) for every K, up to float rounding."""
    W, mu, sigma = truth["W"], truth["mu"], truth["sigma"]
    d = W.shape[1]
    post_cov = torch.linalg.inv(torch.eye(d) + W.T @ W / sigma**2)
    M = post_cov @ W.T / sigma**2
    tril = torch.linalg.cholesky(post_cov)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal((x - mu) @ M.T, scale_tril=tril))

    return model, exact_guide, M


def test_the_guide_passed_is_the_guide_used(ppca_data):
    """log_likelihood(model, guide, x, num_samples=K) with the exact posterior as guide is
    the closed-form log p(x) for every K (constant weights), with the user's model or the
    VAE's (the same density); the VAE's own guide, a shifted Gaussian, gives another value."""
    vae, truth, x = ppca_data
    model, exact_guide, _ = ppca_pyro_program(truth)
    exact = truth["marginal"].log_prob(x).double()
    for K in (1, 3, 1000):
        for m in (model, vae.model):
            pyro.set_rng_seed(K)
            est, se = log_likelihood(m, exact_guide, x, num_samples=K, return_stderr=True)
            assert torch.allclose(est, exact, atol=1e-4, rtol=0), (K, est - exact)
            if K > 1:
                assert (se < 1e-4).all()  # the weights are constant
        assert torch.allclose(elbo(model, exact_guide, x, num_samples=K), exact, atol=1e-4, rtol=0)
        assert torch.allclose(iwae_bound(model, exact_guide, x, K=K), exact, atol=1e-4, rtol=0)
    # the VAE's own guide q ≠ p(z|x): ELBO = log p(x) − KL(q ‖ p(z|x)), the KL > 0.1 nats
    pyro.set_rng_seed(0)
    own, own_se = elbo(vae, x, num_samples=20000, chunk_size=5000, return_stderr=True)
    assert ((exact - own) > 0.1 + 4 * own_se).all(), (exact - own, own_se)
    assert ((own - closed_form_elbo(vae, truth, x)).abs() <= 4 * own_se).all()
    # with one sample, the VAE's guide gives log w of a random z: not log p(x)
    pyro.set_rng_seed(1)
    assert ((log_likelihood(vae, x, num_samples=1) - exact).abs() > 1e-3).all()
    # the shortcut is (vae.model, vae.guide), draw for draw
    pyro.set_rng_seed(2)
    a = log_likelihood(vae, x, num_samples=50)
    pyro.set_rng_seed(2)
    assert torch.equal(a, log_likelihood(vae.model, vae.guide, x, num_samples=50))
    # a second guide next to a VAE object is refused, never silently dropped
    with pytest.raises(TypeError, match="another guide"):
        log_likelihood(vae, exact_guide, x)
    with pytest.raises(TypeError, match="must be the guide"):
        log_likelihood(model, x)


def test_plain_functions_work_for_log_likelihood_iwae_bound_and_elbo(ppca_data):
    """A model and a guide that are plain functions, the guide's parameters in Pyro's
    param store (``pyro.param``, as SVI would leave them), checked against the closed
    forms: ELBO within 4 SE of its formula, L_1 < L_5 < log p(x), log p̂ within 4 SE."""
    vae, truth, x = ppca_data
    model, _, M = ppca_pyro_program(truth)
    d = M.shape[0]
    mu = truth["mu"]

    def guide(x):
        shift = pyro.param("ppca_guide_shift", torch.zeros(d))
        log_var = pyro.param("ppca_guide_log_var", torch.zeros(d))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - mu) @ M.T + shift, (0.5 * log_var).exp()).to_event(1))

    pyro.clear_param_store()
    # the values a fit would have left: those of the VAE's encoder, so closed_form_elbo applies
    _, enc_log_var = vae.q.encoder(x[:1])
    pyro.param("ppca_guide_shift", torch.full((d,), 0.3))
    pyro.param("ppca_guide_log_var", enc_log_var[0].clone())
    try:
        exact = truth["marginal"].log_prob(x).double()
        elbo_exact = closed_form_elbo(vae, truth, x)
        pyro.set_rng_seed(0)
        L1, se1 = elbo(model, guide, x, num_samples=20000, chunk_size=5000, return_stderr=True)
        assert ((L1 - elbo_exact).abs() <= 4 * se1).all(), (L1 - elbo_exact, se1)
        pyro.set_rng_seed(1)
        L5, se5 = iwae_bound(model, guide, x, K=5, num_samples=20000, chunk_size=5000, return_stderr=True)
        assert ((L5 - L1) > 3 * (se1 + se5)).all() and ((exact - L5) > -3 * se5).all()
        pyro.set_rng_seed(2)
        est, se = log_likelihood(model, guide, x, num_samples=20000, chunk_size=5000, return_stderr=True)
        assert ((est - exact).abs() <= 4 * se + se**2).all() and (se < 0.02).all()
        # the guide's parameters came from the param store: at their initial values the ELBO differs
        pyro.clear_param_store()
        assert ((L1 - elbo(model, guide, x, num_samples=2000)) > 1.0).all()
    finally:
        pyro.clear_param_store()


# ---- scale, chunks, bad input -----------------------------------------------------------
def test_evaluation_is_at_scale_one_and_restores_the_model(ppca_data):
    vae, _, x = ppca_data
    vae.training = True
    pyro.set_rng_seed(3)
    a = log_likelihood(vae, x, num_samples=200)
    pyro.set_rng_seed(3)
    b = log_likelihood(vae, x[:10], num_samples=200)  # a tenth of the data: the same per-point values
    assert torch.allclose(a[:10], b)
    assert vae.training


def test_samples_are_drawn_in_bounded_chunks(monkeypatch):
    m = BinaryLatent()
    x = (torch.rand(10, m.D) < 0.5).float()
    shapes = []
    original = IWAE_ELBO.log_weights

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        shapes.append(tuple(out[0].shape))
        return out

    monkeypatch.setattr(IWAE_ELBO, "log_weights", spy)
    log_likelihood(m, x, num_samples=1000, batch_size=4, chunk_size=300)
    assert max(s[0] for s in shapes) == 300 and max(s[1] for s in shapes) == 4
    assert sum(s[0] * s[1] for s in shapes) == 10 * 1000  # every (point, sample) once


def test_bad_input_is_a_clear_error(ppca_data):
    vae, _, x = ppca_data
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(vae, x, num_samples=0)
    with pytest.raises(ValueError, match="K must be a positive integer"):
        iwae_bound(vae, x, K=-5)
    with pytest.raises(ValueError, match="not a multiple of K=3"):
        importance_sampling(vae, x, num_samples=100, ks=(3,))
    with pytest.raises(ValueError, match=r"shape \(N, x_dim\)"):
        log_likelihood(vae, x[0])
    with pytest.raises(ValueError, match="N = 0"):
        log_likelihood(vae, x[:0])
    with pytest.raises(ValueError, match="3 rows, but x has 4"):
        log_likelihood(vae, x, torch.zeros(3))
    with pytest.raises(TypeError, match="model"):
        log_likelihood(object(), x)
    bern = BinaryLatent()
    bern.likelihood = Bernoulli()  # a model's likelihood checks the data
    with pytest.raises(ValueError, match="binary data"):
        log_likelihood(bern, torch.full((2, bern.D), 0.5))


# ---- active units -----------------------------------------------------------------------
class SelectiveEncoder(nn.Module):
    """loc_u = 2 x_u for the first m units (Var over binary x ≈ 1), 0.05 x_u for the rest
    (Var ≈ 6·10⁻⁴): exactly m active units at the threshold 10⁻²."""

    def __init__(self, z_dim, m):
        super().__init__()
        self.register_buffer("gain", torch.tensor([2.0] * m + [0.05] * (z_dim - m)))
        self.z_dim = z_dim

    def forward(self, x):
        return x[:, : self.z_dim] * self.gain, torch.zeros(x.shape[0], self.z_dim)


def test_active_units_counts_the_units_whose_mean_varies_with_x():
    z_dim, m, D = 6, 4, 8
    vae = VAE(SelectiveEncoder(z_dim, m), nn.Linear(z_dim, D), z_dim=z_dim, likelihood="bernoulli", x_dim=D)
    x = (torch.rand(500, D, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    count, variances = active_units(vae, x, return_variances=True)
    assert count == m and variances.shape == (z_dim,)
    expected = x[:, :z_dim].var(0).double() * vae.q.encoder.gain.double() ** 2
    assert torch.allclose(variances, expected, rtol=1e-5)
    assert active_units(vae, x, threshold=1e-4) == z_dim
    with pytest.raises(ValueError, match="threshold"):
        active_units(vae, x, threshold=-1)


def test_likelihood_report_orders_the_bounds():
    """From the same S samples, by Jensen: −log p̂ ≤ −L̂_50 ≤ −L̂_5 ≤ −ELBÔ always."""
    m = BinaryLatent()
    x = (torch.rand(5, m.D, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    pyro.set_rng_seed(0)
    rep = likelihood_report(m, x, num_samples=500, ks=(5, 50))
    assert rep["nll"] <= rep["neg_iwae"]["50"] <= rep["neg_iwae"]["5"] <= rep["neg_elbo"]
    assert rep["n"] == 5 and rep["latent_units"] == m.k and 0 <= rep["active_units"] <= m.k
    json.dumps(rep)  # JSON-ready


# ---- the command line -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "train",
            "--dataset",
            "digits",
            "--binarize",
            "static",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--z-dim",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--overwrite",
        ]
    )
    assert rc == 0
    return out


def test_cli_evaluate_prints_and_writes_json(tiny_run, capsys):
    rc = main(
        [
            "evaluate",
            str(tiny_run),
            "--split",
            "valid",
            "-K",
            "100",
            "--iwae-k",
            "5",
            "10",
            "--limit",
            "12",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NLL (K=100)" in printed and "-L_10" in printed and "active units" in printed
    result = json.loads((tiny_run / "eval_valid.json").read_text())
    assert result["n"] == 12 and result["num_samples"] == 100 and result["split"] == "valid"
    assert result["nll"] <= result["neg_iwae"]["10"] <= result["neg_iwae"]["5"] <= result["neg_elbo"]
    assert all(math.isfinite(result[k]) for k in ("nll", "nll_stderr", "nll_mc_stderr", "neg_elbo"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-K", "0"], "argument -K/--num-samples: must be a positive integer, got 0"),
        (["-K", "-5"], "argument -K/--num-samples: must be a positive integer, got -5"),
        (["-K", "100", "--iwae-k", "3"], "--iwae-k 3"),
        (["--limit", "0"], "argument --limit: must be a positive integer, got 0"),
        (["--chunk-size", "0"], "argument --chunk-size: must be a positive integer, got 0"),
    ],
)
def test_cli_evaluate_rejects_bad_options(tiny_run, capsys, argv, message):
    assert exit_code(["evaluate", str(tiny_run), "--no-progress"] + argv) == 2
    assert message in capsys.readouterr().err


# ---- traced: the same estimates from a compiled graph per chunk shape ---------------------
def test_traced_importance_sampling_gives_the_eager_estimates():
    """Every statistic of importance_sampling(traced=True) equals the eager one with the same
    seed, to float32 rounding (the same draws: the graph calls torch's generator), for a
    VAE and for the enumeration oracle (a Bernoulli guide, constants held as attributes);
    one graph each (two batches of 10 points, two chunks of 25 samples), to keep it short."""
    from pyro_vae import build_vae, load_dataset

    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=3, hidden_dims=(16,))
    x_digits = load_dataset("digits", "valid", binarize="static").x[:20]
    oracle = BinaryLatent()
    x_oracle = (torch.rand(20, oracle.D, generator=torch.Generator().manual_seed(3)) < 0.4).float()
    for model, x in ((vae, x_digits), (oracle, x_oracle)):
        stats = []
        for traced in (False, True):
            pyro.set_rng_seed(5)
            stats.append(
                importance_sampling(model, x, num_samples=50, ks=(5,), batch_size=10, chunk_size=25, traced=traced)
            )
        for key, eager in stats[0].items():
            torch.testing.assert_close(stats[1][key], eager, rtol=1e-5, atol=1e-5, msg=key)


def test_traced_needs_modules():
    m = BinaryLatent()
    x = torch.zeros(3, m.D)
    with pytest.raises(ValueError, match="traced=True .* plain functions"):
        log_likelihood(lambda x: m.model(x), lambda x: m.guide(x), x, num_samples=5, traced=True)


def test_traced_evaluation_of_a_cvae_refuses_a_bad_label_in_any_batch():
    """The traced graphs validate the first batch of each shape only; the labels of a
    conditional VAE are checked once, on the whole of c, before any batch."""
    from pyro_vae import load_dataset
    from pyro_vae.data import DataError
    from pyro_vae.models import build_cvae

    torch.manual_seed(0)
    cvae = build_cvae((1, 8, 8), z_dim=2, hidden_dims=(16,))
    valid = load_dataset("digits", "valid", binarize="static")
    x, c = valid.x[:20], valid.y[:20].clone()
    c[15] = 10
    for traced in (False, True):
        with pytest.raises(DataError, match="out of range"):
            importance_sampling(cvae, x, c, num_samples=10, batch_size=10, chunk_size=10, traced=traced)


def test_log_likelihood_of_a_vamp_prior_vae_matches_quadrature():
    """A VAE with the VampPrior and one latent dimension: log p(x) = log ∫ p(z) p(x|z) dz by
    a Riemann sum on 40,001 points of [−15, 15], the prior built from its definition; the
    K = 10,000 estimate lies within 4 of its
    reported standard errors (+ 0.002 for the quadrature and float32), eager and traced."""
    from pyro_vae import build_vae

    torch.manual_seed(0)
    vae = build_vae((1, 2, 3), z_dim=1, hidden_dims=(8,), prior="vamp", pseudo_inputs=4)
    with torch.no_grad():
        vae.vamp.pseudo_inputs.uniform_(0, 1)
    x = (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    grid = torch.linspace(-15, 15, 40001, dtype=torch.float64)
    with torch.no_grad():
        v64 = build_vae((1, 2, 3), z_dim=1, hidden_dims=(8,), prior="vamp", pseudo_inputs=4).double()
        v64.load_state_dict(vae.state_dict())
        loc, log_var = v64.q.encoder(v64.vamp.pseudo_inputs.clamp(0, 1))[:2]  # the VampPrior, from its definition
        prior = dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(4, dtype=torch.float64)),
            dist.Normal(loc, (0.5 * log_var).exp()).to_event(1),
        )
        log_joint = prior.log_prob(grid[:, None])[:, None] + v64.likelihood(
            v64.decoder(grid[:, None])[:, None, :]
        ).log_prob(x.double()[None])
        exact = torch.logsumexp(log_joint, 0) + math.log(grid[1] - grid[0])
    for traced in (False, True):
        pyro.set_rng_seed(2)
        est, se = log_likelihood(vae, x, num_samples=10000, chunk_size=5000, return_stderr=True, traced=traced)
        assert ((est.double() - exact).abs() <= 4 * se.double() + 2e-3).all(), (traced, est.double() - exact, se)
