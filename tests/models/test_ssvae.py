"""The semi-supervised VAE (M2): y summed out exactly, labelled batches, validation, refusals."""

import math
import warnings

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae.models import ConditionalVAE
from pyro_vae.models.build import build_ssvae
from pyro_vae.models.ssvae import SemiSupervisedVAE, ssvae_objective

SHAPE, Z, H, K = (1, 2, 2), 1, 5, 3


def tiny(alpha=0.0, seed=0):
    torch.manual_seed(seed)
    return build_ssvae(SHAPE, z_dim=Z, hidden_dims=(H,), num_classes=K, alpha=alpha)


def test_unlabelled_loss_is_the_exact_sum_over_y():
    """TraceEnum_ELBO on an unlabelled batch against the hand computation
    −U(x) = −Σ_y q(y|x) [L(x, y) − log q(y|x)], each L(x, y) a 400-draw Monte Carlo mean of
    the labelled bound, the enumerated loss a 4,000-particle one; the tolerance 0.15 nats is
    several standard errors of the 400-draw means on this 4-point batch."""
    m = tiny()
    x = (torch.rand(4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    # hand computation: each class's labelled −ELBO per point, by Monte Carlo over the same number of particles
    per_class = []
    for k in range(K):
        y = torch.full((4,), k)
        torch.manual_seed(11)
        vals = []
        for _ in range(400):
            tr_g = pyro.poutine.trace(m.guide).get_trace(x, y)
            tr_m = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=tr_g)).get_trace(x, y)
            tr_m.compute_log_prob(), tr_g.compute_log_prob()
            lp = (
                tr_m.nodes["x"]["log_prob"]
                + tr_m.nodes["y"]["log_prob"]
                + tr_m.nodes["z"]["log_prob"]
                - tr_g.nodes["z"]["log_prob"]
            )
            vals.append(lp)
        per_class.append(torch.stack(vals).mean(0))  # (B,)
    Lxy = torch.stack(per_class, -1)  # (B, K)
    logq = torch.log_softmax(m.classifier(x), -1)
    want = -(logq.exp() * (Lxy - logq)).sum().item()
    pyro.set_rng_seed(3)
    enum_many = TraceEnum_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    many = enum_many.loss(m.model, m.guide, x)
    assert many == pytest.approx(want, abs=0.15)


def test_enumerated_sum_is_exact_when_z_is_fixed():
    """With q(z|x,y) and p(x|y,z) not depending on z (decoder's z weights zeroed, the guide's
    q(z|x,y) = N(0, I) = p(z)), U(x) = Σ_y q(y|x)[log p(x|y) + log p(y) − log q(y|x)] is a
    closed form and the enumerated loss must equal it exactly."""
    m = tiny()
    with torch.no_grad():
        for p in m.q.encoder.parameters():
            p.zero_()
        first = [mod for mod in m.decoder.modules() if isinstance(mod, torch.nn.Linear)][0]
        first.weight[:, :Z] = 0.0
    x = (torch.rand(5, 4, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    pyro.set_rng_seed(0)
    got = TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, m.guide, x)
    logq = torch.log_softmax(m.classifier(x), -1)
    terms = []
    z = torch.zeros(5, Z)
    for k in range(K):
        h = torch.nn.functional.one_hot(torch.full((5,), k), K).float()
        px = m.likelihood(m.decoder(torch.cat([z, h], -1)))
        terms.append(px.log_prob(x) - math.log(K))
    logpxy = torch.stack(terms, -1)
    want = -(logq.exp() * (logpxy - logq)).sum().item()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_labelled_batch_equals_the_conditional_elbo_plus_prior_and_alpha_term():
    """A labelled batch: −L(x,y) − α log q(y|x) summed over the batch equals the conditional
    VAE's −ELBO (same encoder and decoder, same seed, so the same z) + B log K (the prior
    p(y) = 1/K) − α Σ log q(y_n|x_n)."""
    alpha = 2.5
    m = tiny(alpha=alpha)
    cvae = ConditionalVAE(m.q.encoder, m.decoder, Z, m.condition, prior="fixed", likelihood=m.likelihood, x_dim=m.x_dim)
    x = (torch.rand(6, 4, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pyro.set_rng_seed(5)
    ss = Trace_ELBO().loss(m.model, m.guide, x, y)
    pyro.set_rng_seed(5)
    cv = Trace_ELBO().loss(cvae.model, cvae.guide, x, y)
    logq = torch.log_softmax(m.classifier(x), -1).gather(-1, y[:, None]).sum().item()
    assert ss == pytest.approx(cv + 6 * math.log(K) - alpha * logq, rel=1e-6, abs=1e-5)
    pyro.set_rng_seed(5)
    assert ssvae_objective().loss(m.model, m.guide, x, y) == pytest.approx(ss, rel=1e-6)


def test_validation_on_neither_warns_nor_raises():
    m = tiny(alpha=1.0)
    x = (torch.rand(4, 4, generator=torch.Generator().manual_seed(6)) < 0.5).float()
    obj = ssvae_objective()
    with pyro.validation_enabled(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.loss(m.model, m.guide, x)
        obj.loss(m.model, m.guide, x, torch.tensor([0, 1, 2, 0]))
        obj.loss(m.model, m.guide, x, torch.full((4,), -1))


def test_refusals():
    m = tiny()
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="does not apply"):
        ssvae_objective("iwae")
    with pytest.raises(ValueError, match="mixes"):
        m.model(x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="alpha"):
        SemiSupervisedVAE(m.q.encoder, m.decoder, Z, m.condition, m.classifier, alpha=-1.0, x_dim=4)


def test_classify_and_sample_shapes():
    m = tiny()
    x = torch.rand(3, 4)
    pred = m.classify(x)
    assert pred.shape == (3,) and pred.dtype == torch.int64
    assert ((pred >= 0) & (pred < K)).all()


def _train(out, epochs, resume=False):
    from pyro_vae.cli import main

    if resume:
        return main(["train", "--resume", str(out), "--epochs", str(epochs), "--no-progress"])
    return main(
        [
            "train",
            "--model",
            "ssvae",
            "--labels",
            "50",
            "--hidden",
            "16",
            "--z-dim",
            "2",
            "--batch-size",
            "200",
            "--epochs",
            str(epochs),
            "--seed",
            "0",
            "--no-keep-best",
            "--no-progress",
            "--out",
            str(out),
        ]
    )


def test_cli_resume_is_bit_identical(tmp_path):
    """Two epochs straight against one epoch then ``--resume`` to two: the same weights, bit for bit."""
    assert _train(tmp_path / "straight", 2) == 0
    assert _train(tmp_path / "split", 1) == 0
    assert _train(tmp_path / "split", 2, resume=True) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [["--objective", "iwae"], ["--traced"]])
def test_cli_refuses_what_does_not_apply(tmp_path, extra, capsys):
    from pyro_vae.cli import main

    code = main(
        [
            "train",
            "--model",
            "ssvae",
            "--labels",
            "50",
            "--epochs",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
            *extra,
        ]
    )
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("ssvae" in err[0] or "semi-supervised" in err[0]), err


@pytest.mark.parametrize("resume", [False, True])
def test_cli_training_gives_the_model_its_labels(tmp_path, monkeypatch, resume):
    """``pyro-vae train --model ssvae`` (and its ``--resume``) steps on the labelled batches with
    their labels: the model's y is observed in some training steps, so that the α term and the
    labelled bound are trained. A trainer that passes the images alone trains an unsupervised
    model whose classifier stays at chance."""
    if resume:
        assert _train(tmp_path / "r", 1) == 0
    seen = []
    model = SemiSupervisedVAE.model

    def spy(self, x=None, y=None, **kwargs):
        if torch.is_grad_enabled():  # training steps; validation runs under no_grad
            seen.append(y is not None and bool((y >= 0).all()))
        return model(self, x, y, **kwargs)

    monkeypatch.setattr(SemiSupervisedVAE, "model", spy)
    assert _train(tmp_path / "r", 2, resume=resume) == 0
    assert any(seen), "no training step saw a label"
    assert not all(seen), "every training step saw labels"
