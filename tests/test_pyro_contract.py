"""Pyro's contract, tried as a Pyro user would: the package's models work with every Pyro
tool a user brings (SVI + pyro.optim, autoguides, NUTS, Pyro's validation), whatever
was done with them before. One test per item of the Pyro-native core issue."""

import json

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

import pyro_vae
from pyro_vae import build_vae, fit, load_dataset, load_run
from pyro_vae.cli import main


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train", binarize="static")


def small_vae(**kw):
    return build_vae((1, 8, 8), z_dim=4, hidden_dims=(32,), **kw)


# ---- 1. two VAEs in one process, each with SVI + pyro.optim, both learn --------------------
def test_two_vaes_in_one_process_both_train_with_plain_svi(digits):
    x = digits.x[:128]
    for _ in range(2):  # no pyro.clear_param_store() between them
        torch.manual_seed(0)
        vae = small_vae()
        before = [p.detach().clone() for p in vae.parameters()]
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        first = svi.evaluate_loss(x)
        for _ in range(30):
            svi.step(x)
        changed = sum(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
        assert changed == len(before) == 8
        assert svi.evaluate_loss(x) < first - 100


# ---- 2. autoguides and NUTS on a model returned by fit --------------------------------------
@pytest.fixture(scope="module")
def fitted(digits):
    torch.manual_seed(0)
    vae = small_vae()
    fit(vae, digits, epochs=2, batch_size=100, progress=False, seed=0)
    return vae


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDelta])
def test_an_autoguide_on_a_fitted_model_fits_the_one_image_it_is_given(fitted, digits, autoguide):
    x1 = digits.x[7:8]
    model = poutine.block(fitted.model, hide_types=["param"])  # the decoder stays as fitted
    guide = autoguide(model)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    svi.step(x1)  # the autoguide makes its parameters for the sites it sees
    (name,) = [n for n in pyro.get_param_store() if n.startswith(("AutoNormal.locs", "AutoDelta"))]
    assert pyro.param(name).shape == (1, 4)  # one row: the image's, no table over a training set
    decoder = [p.detach().clone() for p in fitted.decoder.parameters()]
    pyro.set_rng_seed(1)
    start = sum(elbo.loss(model, guide, x1) for _ in range(20)) / 20
    for _ in range(300):
        svi.step(x1)
    pyro.set_rng_seed(1)
    end = sum(elbo.loss(model, guide, x1) for _ in range(20)) / 20
    # AutoDelta's loss −log p(x, z) has no noise at all; AutoNormal's is averaged over 160 draws
    assert end < start - (1.0 if autoguide is AutoNormal else 0.0), (start, end)
    assert all(torch.equal(a, b) for a, b in zip(decoder, fitted.decoder.parameters()))


def test_nuts_samples_the_posterior_of_a_fitted_model_for_one_image(fitted, digits):
    x1 = digits.x[7:8]
    mcmc = MCMC(NUTS(fitted.model), num_samples=40, warmup_steps=40, disable_progbar=True)
    mcmc.run(x1)
    z = mcmc.get_samples()["z"]
    assert z.shape == (40, 1, 4) and torch.isfinite(z).all() and z.std(0).min() > 0


# ---- 3. the scale belongs to the call, not to the object -------------------------------------
def hand_neg_elbo(vae, x):
    """−Σ_n [log p(x_n|z_n) + log p(z_n) − log q(z_n|x_n)], one draw z_n = rsample of q."""
    q = vae.encode(x)
    z = q.rsample()
    return (
        -(vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior(x.shape[:1]).log_prob(z) - q.log_prob(z)).sum().item()
    )


def test_evaluate_loss_of_a_fitted_model_is_the_batchs_own_elbo(fitted, digits):
    xb = load_dataset("digits", "valid", binarize="static").x[:50]
    svi = SVI(fitted.model, fitted.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    pyro.set_rng_seed(5)
    loss = svi.evaluate_loss(xb)
    pyro.set_rng_seed(5)
    assert loss == pytest.approx(hand_neg_elbo(fitted, xb), rel=1e-5)  # not × N/B of the training set
    pyro.set_rng_seed(5)
    scaled = Trace_ELBO().loss(fitted.model, fitted.guide, xb, num_data=len(digits))
    assert scaled == pytest.approx(loss * len(digits) / 50, rel=1e-5)  # scaling is asked for per call


def test_load_run_returns_a_model_at_scale_one(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--binarize", "static", "--out", str(out), "--no-progress"]) == 0
    vae, run = load_run(out)
    assert run["num_data"] > 100
    xb = load_dataset("digits", "valid", binarize="static").x[:20]
    pyro.set_rng_seed(2)
    loss = Trace_ELBO().loss(vae.model, vae.guide, xb)
    pyro.set_rng_seed(2)
    assert loss == pytest.approx(hand_neg_elbo(vae, xb), rel=1e-5)


# ---- 4. Pyro's validation fires, also after the trainer ran -----------------------------------
def test_validation_fires_after_fit(fitted, digits):
    x = digits.x[:4].clone()
    x[0, 0] = 0.5
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="support"):
            Trace_ELBO().loss(fitted.model, fitted.guide, x)


# ---- 5. stock Pyro distributions: Normal's own log-density gradient at the guide's sample ----
def test_guide_site_is_pyros_normal_and_its_log_density_differentiates_in_z():
    vae = small_vae()
    x = (torch.rand(3, 64) < 0.3).float()
    tr = poutine.trace(vae.guide).get_trace(x)
    site = tr.nodes["z"]
    assert type(site["fn"]) is dist.Independent and type(site["fn"].base_dist) is dist.Normal
    z = site["value"]
    (g,) = torch.autograd.grad(site["fn"].log_prob(z).sum(), z)
    loc, scale = site["fn"].base_dist.loc, site["fn"].base_dist.scale
    assert torch.allclose(g, -(z - loc) / scale**2, atol=1e-5)  # d log N(z; μ, σ²)/dz
    model_tr = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x)
    for name in ("z", "x"):
        fn = model_tr.nodes[name]["fn"]
        assert type(fn) is dist.Independent and type(fn.base_dist) in (dist.Normal, dist.Bernoulli)
    with pytest.raises(ImportError):
        import pyro_vae.distributions  # noqa: F401  (the module is gone)


# ---- 7. a decaying-baseline guide leaves no state that breaks other objectives --------------
def test_trace_elbo_works_after_tracegraph_training_with_a_decaying_baseline(digits):
    vae = small_vae(guide_kwargs={"reparameterized": False, "baseline": "decaying"})
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGraph_ELBO())
    for i in range(3):
        svi.step(digits.x[100 * i : 100 * (i + 1)])
    assert any("baseline" in name for name in pyro.get_param_store())
    assert Trace_ELBO().loss(vae.model, vae.guide, digits.x[:10]) > 0
    assert pyro_vae.evaluate_loss(vae, load_dataset("digits", "valid", binarize="static")) > 0


def test_the_trainer_refuses_a_decaying_baseline_with_unequal_batches(digits):
    vae = small_vae(guide_kwargs={"reparameterized": False, "baseline": "decaying"})
    with pytest.raises(ValueError, match="same size"):
        fit(vae, digits, epochs=1, batch_size=100, objective="tracegraph", progress=False)


# ---- 8. loading a run, and build_vae(**config) ------------------------------------------------
def test_build_vae_round_trips_its_config_and_load_run_is_public(tmp_path):
    vae = small_vae(guide="full")
    again = build_vae(**vae.config)
    assert again.config == vae.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
    config = json.loads(json.dumps(vae.config))  # as run.json stores it
    assert build_vae(**config).config == vae.config
    with pytest.raises(ValueError, match="build_model"):
        build_vae(**dict(config, model="ae"))
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    model, run = pyro_vae.load_run(out)
    rebuilt = build_vae(**run["model"])
    rebuilt.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    x = torch.rand(3, 64)
    assert torch.equal(rebuilt.reconstruct(x), model.reconstruct(x))


# ---- 9. objective labels -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, label",
    [
        (["--objective", "elbo"], "-ELBO"),
        (["--objective", "iwae", "--particles", "3"], "-L_3"),
        (["--objective", "fisher"], "Fisher loss"),
        (["--model", "ae"], "reconstruction"),
    ],
)
def test_objective_labels_in_progress_line_and_run_json(tmp_path, capsys, args, label):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"] + args) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert f"train {label} " in printed and f"valid {label} " in printed
    assert "ELBO" not in printed or label == "-ELBO"
    run = json.loads((out / "run.json").read_text())
    assert run["history"]["objective"] == label


# ---- bad input: a clear error naming the expected shape ------------------------------------------
@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(64), r"shape \(batch, 64\), got shape \(64,\)"),
        (torch.zeros(3, 63), r"shape \(batch, 64\), got shape \(3, 63\)"),
        (torch.zeros(2, 1, 8, 8), r"shape \(batch, 64\), got shape \(2, 1, 8, 8\)"),
        (torch.zeros(3, 64, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_x_is_refused_naming_the_expected_shape(x, message):
    vae = small_vae()
    for fn in (vae.model, vae.guide):
        with pytest.raises((ValueError, TypeError), match=message):
            fn(x)
    with pytest.raises((ValueError, TypeError), match=message):
        SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO()).step(x)
    assert len(pyro.get_param_store()) == 0  # the error comes before anything is registered


# ---- a global latent outside the data plate -------------------------------------------------------
def test_a_global_latent_sits_outside_the_data_plate_at_scale_one():
    from examples.global_latent import BayesianBiasVAE, make_guide

    vae = BayesianBiasVAE((1, 8, 8), z_dim=3, hidden_dims=(16,))
    guide = make_guide(vae)
    x = (torch.rand(10, 64) < 0.3).float()
    tr = poutine.trace(guide).get_trace(x, num_data=100)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x, num_data=100)
    assert model_tr.nodes["bias"]["cond_indep_stack"] == () and model_tr.nodes["bias"]["scale"] == 1.0
    assert model_tr.nodes["z"]["scale"] == 10.0 and model_tr.nodes["x"]["scale"] == 10.0


def test_a_copy_of_a_model_trains_its_own_parameters(digits):
    import copy

    x = digits.x[:128]
    torch.manual_seed(0)
    original = small_vae()
    SVI(original.model, original.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(x)
    for clone in (copy.deepcopy(original), __import__("pickle").loads(__import__("pickle").dumps(original))):
        assert clone._pyro_name != original._pyro_name
        before = [p.detach().clone() for p in clone.parameters()]
        svi = SVI(clone.model, clone.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(3):
            svi.step(x)
        assert all(not torch.equal(a, b) for a, b in zip(before, clone.parameters()))
    named = small_vae(name="mine")
    assert copy.deepcopy(named)._pyro_name == "mine"  # an explicit name is kept, as Pyro shares by name


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(3, 64, dtype=torch.float64), "dtype torch.float64 but the model's parameters are torch.float32"),
        (torch.zeros(0, 64), "no data points"),
    ],
)
def test_dtype_and_empty_batches_are_refused(x, message):
    vae = small_vae()
    for fn in (vae.model, vae.guide, vae.encode):
        with pytest.raises((ValueError, TypeError), match=message):
            fn(x)


def test_fit_names_the_data_type_it_needs(digits):
    with pytest.raises(TypeError, match="must be an ImageData"):
        fit(small_vae(), digits.x, epochs=1, progress=False)
