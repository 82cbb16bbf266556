"""The two-stochastic-layer VAE: its sites and shapes, its ELBO against a hand computation,
the closed-form KL path against Monte Carlo, IWAE at K = 1, the joint AmortizedGuide, the
command line and resume."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from run_helpers import exit_code

from pyro_vae import AmortizedGuide
from pyro_vae.models import HierarchicalVAE, build_hvae, build_model
from pyro_vae.objectives import IWAE_ELBO

pytestmark = pytest.mark.usefixtures("one_thread")

D, D1, D2, B = 12, 3, 2, 5


def tiny(prior=None, guide="diagonal", network="gated"):
    torch.manual_seed(0)
    return build_hvae(
        (1, 3, 4),
        z_dim=D2,
        z1_dim=D1,
        hidden_dims=(8,),
        network=network,
        guide=guide,
        prior=prior,
        pseudo_inputs=4 if prior == "vamp" else None,
    )


def data(n=B, seed=1):
    return torch.bernoulli(torch.rand(n, D, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("guide", ["diagonal", "full", "flow"])
@pytest.mark.parametrize("prior", [None, "vamp"])
def test_each_layer_has_its_sites_in_the_data_plate(guide, prior):
    m, x = tiny(prior, guide), data()
    guide_tr = poutine.trace(m.guide).get_trace(x, num_data=50)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x, num_data=50)
    sites = {n: s for n, s in model_tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    assert list(sites) == ["z2", "z1", "x"]
    assert [n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)] == ["z2", "z1"]
    for name, shape in (("z2", (B, D2)), ("z1", (B, D1)), ("x", (B, D))):
        site = sites[name]
        assert site["value"].shape == shape
        assert site["fn"].batch_shape == (B,) and site["fn"].event_shape == shape[1:]
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
        assert site["scale"] == 10.0  # N/B
    assert guide_tr.nodes["z1"]["fn"].batch_shape == (B,)
    assert m.sample(7).shape == (7, D) and m.reconstruct(x).shape == (B, D)
    z1, z2 = m.encode_layers(x)
    assert z1.shape == (B, D1) and z2.shape == (B, D2)
    with torch.no_grad():
        top = m.decode(z2)  # the top layer alone: z1 at the mean of p(z1 | z2)
        assert torch.equal(top, m.decode(torch.cat([m.prior_z1(z2).mean, z2], -1)))
    with pytest.raises(ValueError, match="decode takes"):
        m.decode(torch.zeros(B, D1))


def test_the_elbo_equals_a_hand_computation():
    m, x = tiny("vamp"), data()
    pyro.set_rng_seed(3)
    tr = poutine.trace(m.guide).get_trace(x)
    z2, z1 = tr.nodes["z2"]["value"].detach(), tr.nodes["z1"]["value"].detach()
    with torch.no_grad():
        # q(z2|x), q(z1|x,z2), p(z1|z2), p(x|z1,z2) and the VampPrior, written out with torch alone
        mu2, lv2 = m.q.encoder(x)
        mu1, lv1 = m.q1.encoder(torch.cat([x, z2], -1))
        pm, plv = m.prior1(z2)
        plv = plv.clamp(-6, 2)
        logits = m.decoder(torch.cat([z1, z2], -1))

        def normal(z, mu, log_var):
            return (-0.5 * (z - mu) ** 2 / log_var.exp() - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)

        u = m.vamp.pseudo_inputs.clamp(0, 1)
        umu, ulv = m.q.encoder(u)
        log_p2 = torch.logsumexp(torch.stack([normal(z2, umu[k], ulv[k]) for k in range(4)], -1), -1) - math.log(4)
        log_px = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        hand = (log_px + normal(z1, pm, plv) + log_p2 - normal(z2, mu2, lv2) - normal(z1, mu1, lv1)).sum()
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(m.model, m.guide, x)
    assert loss == pytest.approx(-hand.item(), rel=1e-5, abs=1e-4)


def test_the_closed_form_kl_path_equals_monte_carlo_within_its_error():
    """TraceMeanField_ELBO: KL(q(z2|x) ‖ N(0, I)) exactly and E_q(z2)[KL(q(z1|x,z2) ‖ p(z1|z2))]
    with one z2; Trace_ELBO: every term by Monte Carlo. Both estimate the same ELBO."""
    m, x = tiny(), data()
    pyro.set_rng_seed(0)
    reps, n = 20, 2000
    mc = [
        Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1).loss(m.model, m.guide, x)
        for _ in range(reps)
    ]
    cf = [
        TraceMeanField_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=1).loss(m.model, m.guide, x)
        for _ in range(reps)
    ]
    mc, cf = torch.tensor(mc, dtype=torch.float64), torch.tensor(cf, dtype=torch.float64)
    se = math.sqrt(mc.var().item() / reps + cf.var().item() / reps)
    assert abs(mc.mean().item() - cf.mean().item()) < 4 * se
    assert cf.std() < mc.std()  # the closed form removes the KL terms' noise


def test_the_closed_form_kl_is_used_for_both_layers():
    m, x = tiny(), data()
    pyro.set_rng_seed(0)
    tr = poutine.trace(m.guide).get_trace(x)
    p_tr = poutine.trace(poutine.replay(m.model, trace=tr)).get_trace(x)
    for name in ("z1", "z2"):
        kl = torch.distributions.kl_divergence(tr.nodes[name]["fn"], p_tr.nodes[name]["fn"])
        assert kl.shape == (B,) and (kl >= 0).all()


@pytest.mark.parametrize("prior", [None, "vamp"])
def test_iwae_at_k1_equals_the_elbo(prior):
    m, x = tiny(prior), data()
    pyro.set_rng_seed(5)
    iwae = IWAE_ELBO(num_particles=1).loss(m.model, m.guide, x, num_data=20)
    pyro.set_rng_seed(5)
    elbo = Trace_ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1).loss(
        m.model, m.guide, x, num_data=20
    )
    assert iwae == pytest.approx(elbo, rel=1e-6)
    bound = IWAE_ELBO(num_particles=50).loss(m.model, m.guide, x, num_data=20)
    assert bound < elbo + 1.0  # the K = 50 bound is tighter (a loss no larger, up to noise)


def test_amortized_guide_is_one_joint_guide_over_both_layers():
    m, x = tiny(), data()
    guide = AmortizedGuide(m.model, hidden_dims=(8,))
    pyro.set_rng_seed(0)
    tr = poutine.trace(guide).get_trace(x)
    latent = [
        n
        for n, s in tr.nodes.items()
        if s["type"] == "sample"
        and not s["is_observed"]
        and not s["infer"].get("is_auxiliary")
        and not site_is_subsample(s)
    ]
    assert sorted(latent) == ["z1", "z2"]
    loss = Trace_ELBO().loss(m.model, guide, x)
    assert math.isfinite(loss)


def test_builder_round_trips_its_config_and_refuses_what_does_not_apply():
    m = tiny("vamp", "flow")
    again = build_model(json.loads(json.dumps(m.config)))
    assert isinstance(again, HierarchicalVAE)
    assert [p.shape for p in again.parameters()] == [p.shape for p in m.parameters()]
    with pytest.raises(ValueError, match="network 'conv'"):
        build_hvae((1, 3, 4), network="conv")
    with pytest.raises(ValueError, match="pseudo_inputs"):
        build_hvae((1, 3, 4), pseudo_inputs=3)
    mixed = build_hvae((1, 3, 4), z_dim=2, hidden_dims=(8,), guide="flow", guide1="diagonal")
    assert type(mixed.q).__name__ == "NormalizingFlow" and type(mixed.q1).__name__ == "DiagonalNormal"


def test_kl_warmup_scales_both_layers_latent_sites():
    from pyro_vae.train.trainer import ScaleLatent

    m, x = tiny(), data()
    pyro.set_rng_seed(0)
    tr = poutine.trace(ScaleLatent(0.25)(m.guide)).get_trace(x)
    p_tr = poutine.trace(poutine.replay(ScaleLatent(0.25)(m.model), trace=tr)).get_trace(x)
    assert [p_tr.nodes[n]["scale"] for n in ("z2", "z1", "x")] == [0.25, 0.25, 1.0]


TINY_HVAE = [
    "--model",
    "hvae",
    "--hidden",
    "16",
    "--z-dim",
    "3",
    "--no-progress",
    "--prior",
    "vamp",
    "--pseudo-inputs",
    "5",
    "--network",
    "gated",
    "--kl-warmup",
    "1",
]


@pytest.mark.parametrize("extra", [[], ["--dropout", "0.3"]], ids=["plain", "dropout"])
def test_cli_train_then_resume_is_bit_identical(tmp_path, extra):
    full, part = tmp_path / "full", tmp_path / "part"
    assert exit_code(["train", *TINY_HVAE, *extra, "--epochs", "3", "--out", str(full)]) == 0
    assert exit_code(["train", *TINY_HVAE, *extra, "--epochs", "1", "--out", str(part)]) == 0
    assert exit_code(["train", "--resume", str(part), "--epochs", "3"]) == 0
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer"):
        assert key in a
    flat_a = {k: v for k, v in a["model"].items()}
    flat_b = {k: v for k, v in b["model"].items()}
    assert flat_a.keys() == flat_b.keys()
    assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)
    ha = json.loads((full / "run.json").read_text())["history"]
    hb = json.loads((part / "run.json").read_text())["history"]
    assert ha["train_loss"] == hb["train_loss"] and ha["valid_loss"] == hb["valid_loss"]
    run = json.loads((full / "run.json").read_text())
    assert run["model"]["model"] == "hvae" and build_model(run["model"]).z1_dim == 3
    assert run["model"].get("dropout") == (0.3 if extra else None)


def test_dropout_zeroes_a_fraction_p_of_the_decoders_units_while_training_only():
    """Dropout of probability p after each decoder hidden layer: in training mode a
    fraction p of the units is zero (within 4 binomial standard errors) and the rest are
    the evaluation mode's values over 1 - p; evaluation mode is deterministic and drops nothing."""
    p, n = 0.3, 400
    torch.manual_seed(0)
    m = build_hvae((1, 3, 4), z_dim=D2, z1_dim=D1, hidden_dims=(200, 200), dropout=p)
    assert [type(layer).__name__ for layer in m.decoder.net[0]] == ["GatedLinear", "Dropout"] * 2
    soft = build_hvae((1, 3, 4), hidden_dims=(8, 8), network="mlp", dropout=p).decoder.net[0]
    assert [type(layer).__name__ for layer in soft] == ["Linear", "Softplus", "Dropout"] * 2
    stack = m.decoder.net[0][:2]
    z = torch.randn(n, D1 + D2)
    m.eval()
    clean = stack(z)
    assert torch.equal(m.decoder(z), m.decoder(z)) and torch.equal(stack(z), clean)
    m.train()
    noisy = stack(z)
    dropped = (noisy == 0) & (clean != 0)
    frac, se = dropped.float().mean().item(), math.sqrt(p * (1 - p) / clean.numel())
    assert abs(frac - p) < 4 * se
    kept = ~dropped
    assert torch.allclose(noisy[kept], clean[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    for module in (m.q, m.q1, m.prior1):
        assert not any(isinstance(layer, torch.nn.Dropout) for layer in module.modules())


def test_evaluate_loss_scores_a_dropout_model_in_eval_mode_and_restores_its_mode():
    """After training mode (as ``fit`` leaves the model), ``evaluate_loss`` is the −ELBO of the
    unmasked network: equal to its value in eval mode, not to a masked one."""
    from pyro_vae.data import ImageData
    from pyro_vae.train.trainer import evaluate_loss

    torch.manual_seed(0)
    m = build_hvae((1, 3, 4), z_dim=D2, z1_dim=D1, hidden_dims=(32, 32), dropout=0.5)
    x = ImageData(data(200), image_shape=(1, 3, 4))

    def loss(model):
        pyro.set_rng_seed(0)
        return evaluate_loss(model, x, batch_size=200)

    m.eval()
    clean = loss(m)
    m.train()
    assert loss(m) == clean and m.training and m.decoder.training
    pyro.set_rng_seed(0)
    masked = Trace_ELBO().loss(m.model, m.guide, x.x) / 200
    assert abs(masked - clean) > 1e-3


def test_dropout_is_stored_only_when_used_and_refused_outside_a_probability():
    with_dropout = build_model(json.loads(json.dumps(build_hvae((1, 3, 4), hidden_dims=(8, 8), dropout=0.2).config)))
    assert with_dropout.config["dropout"] == 0.2
    assert sum(isinstance(layer, torch.nn.Dropout) for layer in with_dropout.decoder.modules()) == 2
    plain = build_hvae((1, 3, 4), hidden_dims=(8,)).config
    assert "dropout" not in plain  # a run.json written before --dropout reads as dropout 0
    assert not any(isinstance(layer, torch.nn.Dropout) for layer in build_model(plain).modules())
    for bad in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="dropout must be a probability"):
            build_hvae((1, 3, 4), hidden_dims=(8,), dropout=bad)


def test_cli_refuses_dropout_for_other_models_before_writing(tmp_path, capsys):
    out = tmp_path / "vae"
    assert exit_code(["train", "--model", "vae", "--dropout", "0.2", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dropout is an option of --model hvae, not --model vae" in err[0]
    assert not out.exists()
    assert exit_code(["train", *TINY_HVAE, "--dropout", "1", "--epochs", "1", "--out", str(out)]) == 2
    assert "must be a probability in [0, 1), got 1" in capsys.readouterr().err
    assert not out.exists()


def test_log_likelihood_takes_the_two_layer_pair_unchanged():
    """Importance sampling with the guide q(z2|x) q(z1|x, z2) as proposal: log p̂(x) lies
    above the ELBO and, with K = 2000, within its Monte Carlo error of a K = 20000 estimate."""
    from pyro_vae import log_likelihood

    m, x = tiny("vamp"), data()
    m.eval()
    pyro.set_rng_seed(0)
    small = log_likelihood(m.model, m.guide, x, num_samples=2000)
    large = log_likelihood(m.model, m.guide, x, num_samples=20000)
    pyro.set_rng_seed(0)
    elbo = -Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(m.model, m.guide, x)
    assert small.shape == (B,)
    assert small.sum().item() > elbo
    assert torch.allclose(small, large, atol=0.05)
