"""Score-function against reparameterized gradients (studies/gradient_variance.py): the toy of Example 1.5
against its closed forms, and the VAE's score-function site.

Monte Carlo checks use tolerances of K standard errors, the errors derived from the
number of repetitions (and, for variances, from the estimator's exact fourth moment)."""

import math

import pyro
import pytest
import torch
from gradient_variance import (
    TOY_ROUTES,
    encoder_gradient_moments,
    main,
    measure_toy,
    sample_variance_se,
    toy_estimate,
    toy_gradients,
    toy_guide,
    toy_moments,
    toy_variance,
    vae_gradient_variance,
    vae_variant,
)
from pyro import poutine

from pyro_vae import build_vae, make_objective
from pyro_vae.data import ImageData, load_dataset
from pyro_vae.guides import DiagonalNormal, NonReparameterizedNormal
from pyro_vae.networks import MLPEncoder


def study_exit(argv):
    """``python studies/gradient_variance.py argv``'s exit status."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


K = 4.5  # standard errors allowed
ROUTES = tuple(TOY_ROUTES)


# ---- the toy: closed forms ------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("phi", [-1.3, 0.0, 0.5, 2.0])
def test_closed_forms_agree_with_exact_quadrature(route, phi):
    """The docstring's variances against Gauss–Hermite quadrature of the per-sample estimate
    (exact for polynomials), and every route's mean is 2φ."""
    mean, var, _ = toy_moments(route, phi)
    assert mean == pytest.approx(2 * phi, abs=1e-10)
    assert var == pytest.approx(toy_variance(route, phi), rel=1e-10)


def test_closed_form_values():
    a = 0.5 * math.log(2 * math.pi)
    assert toy_variance("reparam", 3.0) == 4.0
    assert toy_variance("score", 0.0) == 15.0
    assert toy_variance("score", 1.0) == 30.0
    assert toy_variance("score-entropy", 0.0) == pytest.approx(a * a - 3 * a + 3.75)
    assert toy_variance("score-entropy", 0.0) < toy_variance("reparam", 0.0) < toy_variance("score-entropy", 1.0)


def test_sample_variance_error_reduces_to_the_gaussian_case():
    """For the reparameterized route g = 2(φ + ε) is Gaussian: Var s² = 2σ⁴/(R − 1)."""
    for n, r in [(1, 50), (100, 1000)]:
        sigma2 = 4.0 / n
        assert sample_variance_se("reparam", 0.3, n, r) == pytest.approx(math.sqrt(2 * sigma2**2 / (r - 1)))


# ---- the toy: what Pyro computes --------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
def test_pyro_computes_the_per_sample_estimators_exactly(route):
    """Each Pyro route's gradient is, sample for sample, the formula of its row in the
    table: 2(φ+ε), x²(x−φ), (x−φ)(x² + log q(x)). The same seed makes the ELBO's guide
    draw the same x as a traced guide."""
    phi, r = 0.7, TOY_ROUTES[route]
    pyro.set_rng_seed(3)
    g = toy_gradients(phi, route, num_samples=1, repeats=6)
    pyro.set_rng_seed(3)
    trace = poutine.trace(toy_guide).get_trace(torch.full((6,), phi, dtype=torch.float64), r.reparameterized, r.prior)
    x = trace.nodes["x"]["value"]
    assert trace.nodes["x"]["fn"].has_rsample == r.reparameterized
    assert torch.allclose(g, toy_estimate(route, phi, x - phi), atol=1e-12, rtol=0)
    # the three formulas differ on these draws: the check tells the routes apart
    others = [o for o in ROUTES if o != route]
    assert all(not torch.allclose(g, toy_estimate(o, phi, x - phi)) for o in others)


@pytest.mark.parametrize("phi", [0.0, 1.5])
def test_both_routes_are_unbiased_and_their_variances_match_the_closed_forms(phi):
    """R = 20,000 single-sample estimates per route: the mean within K standard errors of
    2φ, the sample variance within K standard errors (exact fourth moment) of the closed
    form, and at least 2K errors away from every other route's closed form."""
    pyro.set_rng_seed(1)
    r = 20000
    for route in ROUTES:
        g = toy_gradients(phi, route, num_samples=1, repeats=r)
        sigma2 = toy_variance(route, phi)
        assert abs(g.mean().item() - 2 * phi) < K * math.sqrt(sigma2 / r), route
        se = sample_variance_se(route, phi, 1, r)
        assert abs(g.var().item() - sigma2) < K * se, (route, g.var().item(), sigma2)
        for other in ROUTES:
            if other != route:
                assert abs(g.var().item() - toy_variance(other, phi)) > 2 * K * se, (route, other)


def test_variance_of_the_mean_of_n_samples_is_one_nth():
    """Vectorized particles: the mean of N = 100 samples has variance σ²/N."""
    rows = measure_toy(
        phis=(1.0,), sample_sizes=(100,), repeats=1500, routes=("reparam", "score"), seed=2, progress=False
    )
    for row in rows:
        assert row["var_closed"] == pytest.approx(toy_variance(row["route"], 1.0) / 100)
        assert abs(row["z"]) < K, row
        assert abs(row["mean"] - 2.0) < K * row["mean_se"], row
    reparam, score = rows
    assert score["var"] > 4 * reparam["var"]  # 30/N against 4/N


def test_toy_bad_input():
    with pytest.raises(ValueError, match="unknown route"):
        toy_gradients(0.0, "pathwise")
    with pytest.raises(ValueError, match="positive"):
        toy_gradients(0.0, "score", num_samples=0)
    with pytest.raises(ValueError, match="at least 4"):
        measure_toy(repeats=3, progress=False)


# ---- the VAE's score-function site ---------------------------------------------------------
def small_vae(**guide_kwargs):
    torch.manual_seed(0)
    return build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,), guide_kwargs=guide_kwargs or None)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", "train", binarize="static")
    data.x = data.x[:200]
    return data


def test_default_guide_is_unchanged(digits):
    trace = poutine.trace(small_vae().guide).get_trace(digits.x[:5])
    assert trace.nodes["z"]["fn"].has_rsample
    assert trace.nodes["z"]["infer"] == {}
    assert not hasattr(small_vae().q, "baseline_net")


@pytest.mark.parametrize("baseline", [None, "decaying", "neural"])
def test_score_function_variant_goes_through_a_non_reparameterized_site(digits, baseline):
    x = digits.x[:5]
    for vae in (
        small_vae(reparameterized=False, baseline=baseline),
        vae_variant(small_vae(), {None: "score", "decaying": "score+decaying", "neural": "score+neural"}[baseline]),
    ):
        trace = poutine.trace(vae.guide).get_trace(x)
        fn = trace.nodes["z"]["fn"]
        assert not fn.has_rsample
        assert isinstance(fn.base_dist, NonReparameterizedNormal)
        options = trace.nodes["z"]["infer"].get("baseline", {})
        assert bool(options.get("use_decaying_avg_baseline")) == (baseline is not None)
        assert ("nn_baseline" in options) == (baseline == "neural")


def test_variant_shares_the_networks():
    vae = small_vae()
    variant = vae_variant(vae, "score+neural")
    assert variant.q.encoder is vae.q.encoder and variant.decoder is vae.decoder
    assert not variant.q.reparameterized


def test_neural_baseline_is_scaled_by_the_plate_and_learns(digits):
    """The network predicts nats per point; Pyro's costs are scaled by N/B, so is it. A
    TraceGraph_ELBO step gives its parameters gradients (the baseline loss)."""
    vae = small_vae(reparameterized=False, baseline="neural")
    x = digits.x[:10]
    with torch.no_grad():
        vae.q.baseline_net.net[-1].bias.fill_(1.5)
    options = vae.q.site_infer(x, scale=20.0)["baseline"]
    assert torch.allclose(options["nn_baseline"](x), torch.full((10,), 30.0))
    make_objective("tracegraph").loss_and_grads(vae.model, vae.guide, x, num_data=200)
    assert vae.q.baseline_net.net[-1].weight.grad.abs().sum() > 0  # its first layer follows
    assert vae.q.encoder.head.weight.grad.abs().sum() > 0


def test_baseline_options_are_checked(digits):
    enc = MLPEncoder(64, 2, (8,))
    with pytest.raises(ValueError, match="reparameterized=False"):
        DiagonalNormal(enc, 2, baseline="decaying")
    with pytest.raises(ValueError, match="unknown baseline"):
        DiagonalNormal(enc, 2, reparameterized=False, baseline="average")
    with pytest.raises(ValueError, match="baseline_beta"):
        DiagonalNormal(enc, 2, reparameterized=False, baseline="decaying", baseline_beta=1.5)
    with pytest.raises(ValueError, match="baseline_net"):
        DiagonalNormal(enc, 2, reparameterized=False, baseline_net=torch.nn.Linear(64, 1))
    vae = small_vae(reparameterized=False, baseline="decaying")
    elbo = make_objective("tracegraph")
    elbo.loss_and_grads(vae.model, vae.guide, digits.x[:10])


def tiny_vae():
    """A VAE small enough for the score-function estimator's variance: D = 6, d = 1."""
    torch.manual_seed(0)
    return build_vae((1, 2, 3), z_dim=1, hidden_dims=(4,))


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)
    return ImageData(x=(torch.rand(64, 6, generator=g) < 0.4).float(), image_shape=(1, 2, 3), name="tiny")


def _gradient_estimates(vae, x, objective, repeats, particles=2000):
    """``repeats`` estimates of the encoder's gradient, each from ``particles`` vectorized particles."""
    objective = make_objective(objective, particles)
    return torch.stack([encoder_gradient_moments(vae, x, objective, repeats=2)[0] for _ in range(repeats // 2)])


def _agree(g_a, g_b):
    """Per-parameter z of the difference of two sets of estimates' means, and the signal of
    ``g_b`` (|mean| in units of the same standard error). With d = 1 the parameters'
    gradients are strongly correlated, so each z is checked on its own (max |z| < K), not
    their sum of squares as if independent."""
    se = torch.sqrt(g_a.var(0) / len(g_a) + g_b.var(0) / len(g_b))
    keep = se > 0
    return (g_a.mean(0) - g_b.mean(0))[keep] / se[keep], g_b.mean(0)[keep].abs() / se[keep]


def test_score_function_gradient_matches_the_reparameterized_one_in_expectation(tiny_data):
    """On a tiny VAE at fixed parameters: 30 estimates per route, each the mean of two
    2,000-particle estimates; per encoder parameter, the means agree within K standard
    errors (each route's error from its spread). The check has power: most parameters'
    gradients lie many errors from 0, so a wrong (or zero-mean) estimator would fail."""
    x = tiny_data.x[:4]
    vae = tiny_vae()
    pyro.set_rng_seed(0)
    g_rep = _gradient_estimates(vae, x, "elbo", 60)
    g_sf = _gradient_estimates(vae_variant(vae, "score"), x, "tracegraph", 60)
    z, signal = _agree(g_sf, g_rep)
    assert z.abs().max() < K, z.abs().max()
    assert (signal > 3 * K).float().mean() > 0.5
    assert g_sf.var(0).sum() > 10 * g_rep.var(0).sum()  # and it is the noisier route


def test_baselines_lower_the_variance_and_keep_the_mean(tiny_data):
    """At fixed parameters the score-function encoder gradient is noisier than the
    reparameterized one, a settled decaying-average baseline lowers its variance, and with
    the baseline (settled, then frozen) the estimates still average to the
    reparameterized gradient."""
    x = tiny_data.x[:4]
    vae = tiny_vae()
    pyro.set_rng_seed(0)
    rows = {
        r["route"]: r
        for r in vae_gradient_variance(
            vae, x, tiny_data, ("reparam", "score", "score+decaying"), repeats=100, settle_steps=30, progress=False
        )
    }
    assert rows["score"]["ratio"] > 5
    assert rows["score+decaying"]["mean_var"] < 0.7 * rows["score"]["mean_var"]
    g_rep = _gradient_estimates(vae, x, "elbo", 20)
    variant = vae_variant(vae, "score+decaying")
    with pyro.get_param_store().scope():
        objective = make_objective("tracegraph", 2000)
        for _ in range(20):  # settle the average of every (particle, point) slot on this batch
            objective.loss_and_grads(variant.model, variant.guide, x)
        variant.q.baseline_beta = 1.0
        g_dec = _gradient_estimates(variant, x, "tracegraph", 30)
    z, signal = _agree(g_dec, g_rep)
    assert z.abs().max() < K, z.abs().max()
    assert (signal > 3 * K).float().mean() > 0.5


# ---- the command line -------------------------------------------------------------------
def test_cli_gradvar_writes_tables_and_figures(tmp_path, capsys):
    out = tmp_path / "gv"
    code = study_exit(
        [
            "--out",
            str(out),
            "--dataset",
            "digits",
            "--phis",
            "0",
            "1",
            "--sizes",
            "10",
            "100",
            "--repeats",
            "20",
            "--train-size",
            "100",
            "--valid-size",
            "50",
            "--z-dim",
            "2",
            "--hidden",
            "8",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "20",
            "--grad-repeats",
            "3",
            "--settle-steps",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| score | 1 | 30 |" in printed and "| reparam | elbo |" in printed
    for name in (
        "toy_variance.png",
        "toy_variance.csv",
        "toy_variance.md",
        "vae_elbo_curves.png",
        "vae_gradient_variance.csv",
        "vae_gradient_variance.json",
        "vae_curves.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "toy_variance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_gradvar_bad_input(tmp_path, capsys):
    assert study_exit(["--part", "toy", "--out", str(tmp_path / "a"), "--repeats", "2"]) == 2
    assert "argument --repeats: must be an integer ≥ 4, got 2" in capsys.readouterr().err
    assert study_exit(["--part", "vae", "--out", str(tmp_path / "b"), "--train-size", "10", "--batch-size", "100"]) == 2
    assert "smaller than --batch-size" in capsys.readouterr().err


def test_the_guide_passes_the_neural_baseline_the_plates_scale_n_over_b(digits):
    """The VAE's guide hands ``site_infer`` s = N/B: the baseline network predicts nats per
    data point and the baseline is s times it (inverting s to B/N would halve nothing here
    but is caught: 200/10 = 20 against 0.05)."""
    vae = small_vae(reparameterized=False, baseline="neural")
    x = digits.x[:10]
    with torch.no_grad():
        vae.q.baseline_net.net[-1].bias.fill_(1.5)
    tr = poutine.trace(vae.guide).get_trace(x, num_data=200)
    options = tr.nodes["z"]["infer"]["baseline"]
    assert torch.allclose(options["nn_baseline"](x), torch.full((10,), 1.5 * 20))
    unscaled = poutine.trace(vae.guide).get_trace(x).nodes["z"]["infer"]["baseline"]
    assert torch.allclose(unscaled["nn_baseline"](x), torch.full((10,), 1.5))


def test_gradient_moments_equal_torch_var_of_the_same_draws(digits):
    from gradient_variance import _backward, encoder_gradient_moments

    vae = small_vae()
    x = digits.x[:16]
    objective = make_objective("elbo")
    pyro.set_rng_seed(3)
    mean, var = encoder_gradient_moments(vae, x, objective, repeats=30)
    pyro.set_rng_seed(3)
    params = list(vae.q.encoder.parameters())
    draws = []
    for _ in range(30):
        vae.zero_grad(set_to_none=True)
        _backward(objective, vae.model, vae.guide, x)
        draws.append(torch.cat([p.grad.reshape(-1) for p in params]).double() / x.shape[0])
    draws = torch.stack(draws)
    assert torch.allclose(mean, draws.mean(0), rtol=1e-9, atol=1e-12)
    assert torch.allclose(var, draws.var(0), rtol=1e-9, atol=1e-15)  # unbiased, as torch.var


def test_the_study_runs_as_a_script():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "studies" / "gradient_variance.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--part" in r.stdout and "(default: all)" in r.stdout, r.stderr
