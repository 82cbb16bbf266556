"""NUTS against the closed-form posterior of a linear-Gaussian model; Pareto k̂, the
divergences and ``pyro-vae posterior`` (issue #6)."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import SIGMA, W, X, exact, linear_gaussian_vae, with_gaussian_guide
from run_helpers import exit_code

from pyro_vae.cli import main
from pyro_vae.eval import posterior as P
from pyro_vae.eval.calls import fixed_model


@pytest.fixture(scope="module")
def nuts():
    pyro.set_rng_seed(0)
    return P.nuts_posterior(linear_gaussian_vae(), X, num_samples=400, warmup_steps=200, num_chains=2, jit_compile=True)


def test_nuts_matches_the_closed_form_posterior(nuts):
    mean, cov, _ = exact()
    diag = P.nuts_diagnostics(nuts)
    assert diag["max_rhat"] < 1.05 and diag["divergences"] == 0 and diag["num_draws"] == 800
    ess = diag["min_ess_bulk"]
    assert ess > 100
    z = P.nuts_draws(nuts).float()
    sd = cov.diagonal().sqrt()
    # the mean of ESS effective draws has standard error sd/√ESS: allow 4 of them
    assert ((z.mean(0) - mean).abs() < 4 * sd / math.sqrt(ess)).all()
    # a (co)variance estimate has relative standard error ≈ √(2/ESS) (Gaussian draws): allow 4 of them
    tol = 4 * math.sqrt(2 / ess) * sd[:, None] * sd[None, :]
    assert ((torch.cov(z.T) - cov).abs() < tol).all()


def test_nuts_refuses_a_batch():
    with pytest.raises(ValueError, match="one data point at a time"):
        P.nuts_posterior(linear_gaussian_vae(), X.expand(2, 3))
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        P.nuts_posterior(linear_gaussian_vae(), X, num_chains=0)


def test_pareto_khat_separates_a_covering_guide_from_a_too_narrow_one():
    mean, cov, _ = exact()
    vae = linear_gaussian_vae()
    pyro.set_rng_seed(1)
    wide = P.importance_log_weights(with_gaussian_guide(vae, mean, 1.5 * cov), X, num_samples=2000)
    narrow = P.importance_log_weights(with_gaussian_guide(vae, mean, 0.1 * cov), X, num_samples=2000)
    # w = p/q is bounded for the wider q: a light tail; for q = N(m, cΣ), c < 1, the tail of w
    # is Pareto with shape k = 1 − c = 0.9 (P(w > t) ~ t^(−1/(1−c)))
    assert P.pareto_khat(wide).item() < 0.5
    assert P.pareto_khat(narrow).item() > 0.7
    with pytest.raises(ValueError, match="at least 10"):
        P.pareto_khat(torch.zeros(1, 5))


def test_divergences_vanish_for_the_exact_guide_and_not_for_a_narrow_one(nuts):
    mean, cov, log_px = exact()
    vae = linear_gaussian_vae()
    good = P.compare_to_nuts(with_gaussian_guide(vae, mean, cov), X, nuts, num_samples=2000)
    assert good["log_px"] == pytest.approx(log_px, abs=4 * good["log_px_stderr"] + 1e-3)
    assert good["elbo"] == pytest.approx(log_px, abs=1e-3)  # w is constant: ELBO = log p(x) exactly
    assert abs(good["kl_q_p"]) < 4 * good["log_px_stderr"] + 1e-3
    # KL(p‖q) averages log p(x,z) − log q(z|x) = log p(x) over NUTS draws: 0 whatever the draws
    assert abs(good["kl_p_q"]) < 4 * good["log_px_stderr"] + 1e-3
    assert good["khat"] < 0.7
    bad = P.compare_to_nuts(with_gaussian_guide(vae, mean, 0.25 * cov), X, nuts, num_samples=2000)
    # closed forms for q = N(m, cΣ), p = N(m, Σ), d = 2: KL(q‖p) = c − 1 − log c, KL(p‖q) = 1/c − 1 + log c
    c = 0.25
    assert bad["kl_q_p"] == pytest.approx(c - 1 - math.log(c), abs=0.05)
    # over p, log p(z|x) − log q(z|x) = ½ (1/c − 1) u² + const with u² ~ χ²₂ (variance 2d = 4): the mean of
    # ESS effective NUTS draws has standard error ½ (1/c − 1) √(4/ESS); allow 4 of them, plus log p(x)'s error
    tol = 4 * 0.5 * (1 / c - 1) * math.sqrt(4 / bad["min_ess_bulk"]) + 4 * bad["log_px_stderr"]
    assert bad["kl_p_q"] == pytest.approx(1 / c - 1 + math.log(c), abs=tol)


def test_cli_posterior_writes_figure_and_khat(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--guide",
                "full",
                "--epochs",
                "1",
                "--z-dim",
                "2",
                "--hidden",
                "32",
                "--binarize",
                "dynamic",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "posterior",
                str(run),
                "--index",
                "17",
                "--num-samples",
                "60",
                "--warmup",
                "60",
                "--is-samples",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "Pareto k̂" in capsys.readouterr().out
    result = json.loads((run / "posterior_17.json").read_text())
    assert math.isfinite(result["khat"]) and result["guide"] == "full" and result["num_draws"] == 120
    assert (run / "posterior_17.png").stat().st_size > 10_000
    assert exit_code(["posterior", str(run), "--index", "100000", "--no-progress"]) == 2
    assert "--index 100000 is out of range" in capsys.readouterr().err


# ---- a Pyro model callable and a user's own guide ---------------------------------------
def linear_gaussian_model(x):
    """The same model as a user writes it: a plain function, its latent site named "w"."""
    with pyro.plate("data", x.shape[0]):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(w @ W.T, SIGMA).to_event(1), obs=x)


def exact_guide(x):
    """A user's own guide: the exact posterior q(z|x) = N(Σ Wᵀ x/σ², Σ)."""
    _, cov, _ = exact()
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.MultivariateNormal(x @ (cov @ W.T / SIGMA**2).T, covariance_matrix=cov))


def assert_matches_the_closed_form(z, ess):
    """Mean within 4 sd/√ESS, covariance within 4 √(2/ESS) sd_i sd_j of the exact posterior."""
    mean, cov, _ = exact()
    sd = cov.diagonal().sqrt()
    assert ((z.mean(0) - mean).abs() < 4 * sd / math.sqrt(ess)).all(), (z.mean(0), mean)
    assert ((torch.cov(z.T) - cov).abs() < 4 * math.sqrt(2 / ess) * sd[:, None] * sd[None, :]).all()


def test_nuts_takes_a_plain_model_callable_and_compare_takes_a_users_guide():
    _, _, log_px = exact()
    vae = linear_gaussian_vae()
    vae.train()
    pyro.set_rng_seed(3)
    idata = P.nuts_posterior(vae.model, X, num_samples=300, warmup_steps=200, num_chains=2, jit_compile=True)
    diag = P.nuts_diagnostics(idata)
    assert diag["num_draws"] == 600 and diag["max_rhat"] < 1.05 and diag["min_ess_bulk"] > 100
    assert_matches_the_closed_form(P.nuts_draws(idata).float(), diag["min_ess_bulk"])
    # the module behind the bound method is back as it was: train mode, parameters trainable
    assert vae.training and all(p.requires_grad for p in vae.parameters())
    # the user's exact guide: w = p(x, z)/q(z|x) = p(x) for every z, so ELBO = log p(x) exactly
    good = P.compare_to_nuts(vae.model, exact_guide, X, idata, num_samples=1000)
    assert good["elbo"] == pytest.approx(log_px, abs=1e-4) and good["log_px_q"] == pytest.approx(log_px, abs=1e-4)
    assert good["log_px"] == pytest.approx(log_px, abs=4 * good["log_px_stderr"] + 1e-3)
    lw = P.importance_log_weights(vae.model, exact_guide, X, num_samples=100)
    assert lw.shape == (1, 100) and torch.allclose(lw, torch.full_like(lw, log_px), atol=1e-4)
    # while the VAE's own guide (its zero "encoder": q = N(0, I)) is far from p(z|x)
    own = P.compare_to_nuts(vae, X, idata, num_samples=1000)
    assert own["kl_q_p"] > 1.0 and own["elbo"] < log_px - 1.0
    # the guide draws are the user's guide's: N(mean, Σ) from 4000 independent draws
    pyro.set_rng_seed(4)
    assert_matches_the_closed_form(P.guide_draws(vae.model, exact_guide, X, num_samples=4000).float(), 4000)


def test_nuts_takes_a_model_function_of_ones_own():
    pyro.set_rng_seed(5)
    idata = P.nuts_posterior(
        linear_gaussian_model, X[0], num_samples=300, warmup_steps=200, num_chains=2, jit_compile=True
    )
    assert list(idata.posterior.data_vars) == ["w"] and idata.posterior["w"].shape == (2, 300, 2)
    diag = P.nuts_diagnostics(idata)
    assert diag["max_rhat"] < 1.05 and diag["min_ess_bulk"] > 100
    assert_matches_the_closed_form(P.nuts_draws(idata).float(), diag["min_ess_bulk"])
    _, _, log_px = exact()
    with fixed_model(linear_gaussian_model):  # log p(x, z) at z = 0: log N(x; 0, σ² I)
        lj = P.log_joint(linear_gaussian_model, X, torch.zeros(1, 2))
    expected = dist.Normal(0.0, SIGMA).log_prob(X[0]).sum() + dist.Normal(0.0, 1.0).log_prob(torch.zeros(2)).sum()
    assert lj.item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(TypeError, match="must be the guide"):
        P.compare_to_nuts(linear_gaussian_model, X, idata)
