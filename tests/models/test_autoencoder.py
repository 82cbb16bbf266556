"""The autoencoder baseline: a Pyro model/guide pair whose ELBO is the reconstruction
loss alone, trained by the same Trainer, built and reloaded like any model."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import load_run, runs
from pyro_vae.cli import main
from pyro_vae.data import load_dataset
from pyro_vae.guides import PointMass
from pyro_vae.models import MODEL_BUILDERS, Autoencoder, build_autoencoder, build_model, build_vae
from pyro_vae.objectives import make_objective
from pyro_vae.train.trainer import Trainer, evaluate_loss

SHAPE = (1, 8, 8)


def _binary(n, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def _reconstruction_nll(ae, x):
    """−Σ_n log p(x_n | z = f(x_n)) written out with torch alone (binary cross-entropy
    of the decoder's logits), independent of Pyro."""
    (code,) = ae.q.encoder(x)
    return F.binary_cross_entropy_with_logits(ae.decoder(code), x, reduction="sum")


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "tracegraph"])
def test_loss_is_the_reconstruction_term_alone(objective):
    ae = build_autoencoder(SHAPE, z_dim=2, hidden_dims=(16,))
    # push the codes far from the origin: any prior or KL term would now be large
    with torch.no_grad():
        ae.q.encoder.head.bias.fill_(30.0)
    x = _binary(12)
    loss = make_objective(objective).loss(ae.model, ae.guide, x)
    expected = _reconstruction_nll(ae, x).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # the same codes under a VAE's prior would cost Σ_n ½‖z_n‖² + log 2π ≈ 12 × 900 nats more
    (code,) = ae.q.encoder(x)
    prior_term = (0.5 * code.pow(2) + 0.5 * math.log(2 * math.pi)).sum().item()
    assert prior_term > 10_000


def test_loss_scales_to_the_data_set_and_has_no_noise():
    ae = build_autoencoder(SHAPE, z_dim=3, hidden_dims=(16,))
    x = _binary(10)
    elbo = make_objective("elbo")  # a batch of 10 stands for 50 points: the loss is scaled by 5
    losses = {elbo.loss(ae.model, ae.guide, x, num_data=50) for _ in range(3)}
    assert len(losses) == 1, "a deterministic encoder gives the same loss every time"
    assert losses.pop() == pytest.approx(5 * _reconstruction_nll(ae, x).item(), rel=1e-5)


def test_gaussian_likelihood_loss_is_the_gaussian_reconstruction_term():
    ae = build_autoencoder(SHAPE, z_dim=2, hidden_dims=(16,), likelihood="gaussian", scale=0.3)
    x = torch.rand(7, 64, generator=torch.Generator().manual_seed(1))
    (code,) = ae.q.encoder(x)
    mean = ae.decoder(code)
    nll = (0.5 * ((x - mean) / 0.3) ** 2 + math.log(0.3) + 0.5 * math.log(2 * math.pi)).sum().item()
    assert make_objective("elbo").loss(ae.model, ae.guide, x) == pytest.approx(nll, rel=1e-5)


def test_same_networks_as_the_vae_except_the_encoder_head():
    ae = build_autoencoder(SHAPE, z_dim=4, hidden_dims=(32,))
    vae = build_vae(SHAPE, z_dim=4, hidden_dims=(32,))
    a = {k: v.shape for k, v in ae.state_dict().items()}
    v = {k: v.shape for k, v in vae.state_dict().items()}
    assert a.keys() == v.keys()
    differ = {k for k in a if a[k] != v[k]}
    assert differ == {"q.encoder.head.weight", "q.encoder.head.bias"}
    assert a["q.encoder.head.weight"] == (4, 32)  # one head: the code
    assert isinstance(ae.q, PointMass)


def test_encode_reconstruct_and_sample_from_the_prior():
    ae = build_autoencoder(SHAPE, z_dim=2, hidden_dims=(16,))
    x = _binary(5)
    (code,) = ae.q.encoder(x)
    q = ae.encode(x)
    assert torch.equal(q.mean, code) and torch.equal(q.sample(), code)
    assert torch.allclose(ae.reconstruct(x), torch.sigmoid(ae.decoder(code)))
    # sample(n) decodes z ~ N(0, I): the same draws, decoded by hand
    pyro.set_rng_seed(3)
    samples = ae.sample(6)
    pyro.set_rng_seed(3)
    z = torch.randn(6, 2)
    assert torch.allclose(samples, torch.sigmoid(ae.decoder(z)))


def test_trainer_trains_the_autoencoder_on_digits():
    train = load_dataset("digits", "train", binarize="dynamic")
    valid = load_dataset("digits", "valid", binarize="static")
    ae = build_autoencoder(train.image_shape, z_dim=4, hidden_dims=(64,))
    before = evaluate_loss(ae, valid)
    trainer = Trainer(ae, train, valid, lr=3e-3, batch_size=64, seed=0)
    history = trainer.run(5, progress=False)
    # the validation loss is the reconstruction loss: with no KL it falls well below the
    # loss at initialisation (≈ 64 log 2 = 44 nats) and stays finite
    assert before > 40
    assert history.valid_loss[-1] < 0.75 * before
    assert history.valid_loss[-1] == pytest.approx(_reconstruction_nll(ae, valid.x).item() / len(valid), rel=1e-4)


def test_registered_and_rebuilt_from_its_config():
    assert MODEL_BUILDERS["ae"] is build_autoencoder
    ae = build_model(
        dict(
            model="ae",
            image_shape=[1, 8, 8],
            z_dim=3,
            network="mlp",
            hidden_dims=[16],
            likelihood="bernoulli",
            guide="diagonal",
            scale=None,
        )
    )
    assert isinstance(ae, Autoencoder)
    again = build_model(ae.config)
    assert isinstance(again, Autoencoder) and again.config == ae.config


def test_conv_networks_work_too():
    ae = build_autoencoder(SHAPE, z_dim=2, network="conv")
    x = _binary(4)
    assert make_objective("elbo").loss(ae.model, ae.guide, x) == pytest.approx(
        F.binary_cross_entropy_with_logits(ae.decoder(ae.q.encoder(x)[0]), x, reduction="sum").item(), rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(guide="full"), "point mass"),
        (dict(guide_kwargs={"rank": 2}), "no guide options"),
    ],
)
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        build_autoencoder(SHAPE, z_dim=2, **kwargs)


def test_cli_trains_and_samples_an_autoencoder(tmp_path, capsys):
    out = tmp_path / "ae"
    rc = main(
        [
            "train",
            "--model",
            "ae",
            "--dataset",
            "digits",
            "--binarize",
            "dynamic",
            "--z-dim",
            "2",
            "--hidden",
            "32",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    model, run = load_run(out)
    assert isinstance(model, Autoencoder) and run["model"]["model"] == "ae"
    assert (out / runs.CHECKPOINT).is_file()
    rc = main(["sample", str(out), "-n", "16", "--out", str(tmp_path / "s.png")])
    assert rc == 0 and (tmp_path / "s.png").stat().st_size > 0
