"""The conditional VAE (issue #4): its ELBO, its conditions, its samples, its CLI."""

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import cli, load_run
from pyro_vae.data import DataError, ImageData, load_dataset, one_hot, quadrant_mask, with_quadrant_masks
from pyro_vae.models import (
    ConditionalVAE,
    LabelCondition,
    QuadrantCondition,
    build_cvae,
    build_cvae_quadrant,
    build_model,
    build_vae,
)
from pyro_vae.networks import MLPDecoder, MLPEncoder
from pyro_vae.objectives import make_objective
from pyro_vae.train.trainer import Trainer, evaluate_loss

SHAPE = (1, 8, 8)
D, K, Z, H = 64, 10, 4, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _binary_batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, D, generator=g) < 0.3).float()
    c = torch.randint(0, K, (n,), generator=g)
    return x, c


def _first_linear(module):
    return next(m for m in module.modules() if isinstance(m, torch.nn.Linear))


def _cvae_ignoring_c(vae, constant=None):
    """A CVAE with the VAE's weights whose networks carry no information from c.

    ``constant=None``: the weights that read h(c) are zero. ``constant=k``: they are
    random, and the first layers' biases are shifted by −W_c e_k, so that for c = k the
    networks compute exactly the VAE's functions while still reading c."""
    cvae = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,))
    own = cvae.state_dict()
    for name, value in vae.state_dict().items():
        if own[name].shape == value.shape:
            own[name] = value.clone()
    cvae.load_state_dict(own)
    with torch.no_grad():
        for net, vnet, n_in in ((cvae.q.encoder, vae.q.encoder, D), (cvae.decoder, vae.decoder, Z)):
            lin, vlin = _first_linear(net), _first_linear(vnet)
            lin.weight[:, :n_in] = vlin.weight
            lin.bias.copy_(vlin.bias)
            if constant is None:
                lin.weight[:, n_in:] = 0.0
            else:
                lin.weight[:, n_in:] = torch.randn_like(lin.weight[:, n_in:])
                lin.bias -= lin.weight[:, n_in + constant]
    return cvae


@pytest.mark.parametrize("objective,particles", [("elbo", 1), ("meanfield", 1), ("elbo", 3)])
@pytest.mark.parametrize("constant", [None, 3])
def test_conditional_elbo_equals_vae_elbo_when_c_carries_no_information(objective, particles, constant):
    """Fixed prior N(0, I) and networks that get nothing from c: the conditional ELBO
    of (x, c) is the VAE's ELBO of x, draw for draw (same seed, same ε)."""
    torch.manual_seed(0)
    vae = build_vae(SHAPE, z_dim=Z, hidden_dims=(H,))
    cvae = _cvae_ignoring_c(vae, constant)
    x, c = _binary_batch()
    if constant is not None:
        c = torch.full_like(c, constant)
    elbo = make_objective(objective, particles)
    pyro.set_rng_seed(7)
    loss_vae = elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    loss_cvae = elbo.loss(cvae.model, cvae.guide, x, c)
    assert loss_cvae == pytest.approx(loss_vae, rel=1e-5)
    # and the check can fail: a model that does read c gives another value
    with torch.no_grad():
        _first_linear(cvae.decoder).weight[:, Z:] += 1.0
    pyro.set_rng_seed(7)
    assert abs(elbo.loss(cvae.model, cvae.guide, x, c) - loss_vae) > 1e-2


def test_learned_prior_meanfield_elbo_matches_closed_form():
    """With a prior network, TraceMeanField_ELBO's loss is
    −[log p(x|z,c) − KL(N(μq, σq²) ‖ N(μp, σp²))] with z the guide's draw, where
    KL = Σ_j log(σp/σq) + (σq² + (μq − μp)²) / (2σp²) − ½ (Theorem 1.1's general form)."""
    torch.manual_seed(0)
    cvae = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,), prior="learned")
    x, c = _binary_batch()
    pyro.set_rng_seed(11)
    loss = make_objective("meanfield").loss(cvae.model, cvae.guide, x, c)
    with torch.no_grad():
        h = one_hot(c, K)
        mq, lvq = cvae.q.encoder(torch.cat([x, h], -1))
        mp, lvp = cvae.prior_net(h)
        sq, sp = (0.5 * lvq).exp(), (0.5 * lvp).exp()
        pyro.set_rng_seed(11)
        z = mq + sq * torch.randn_like(mq)  # the guide's reparameterized draw, same RNG stream
        logits = cvae.decoder(torch.cat([z, h], -1))
        log_px = (x * logits - F.softplus(logits)).sum()
        kl = (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum()
    assert loss == pytest.approx(float(kl - log_px), rel=1e-5)


class _ExactPosterior(torch.nn.Module):
    """The exact posterior of a linear-Gaussian CVAE with d = 1, as a diagonal-guide encoder
    [x, e_c] -> (loc, log_var)."""

    def __init__(self, w, w_c, b, sigma):
        super().__init__()
        var = 1.0 / (1.0 + w.pow(2).sum() / sigma**2)  # Σ = (1 + wᵀw/σ²)⁻¹
        gain = var / sigma**2
        self.register_buffer("A", gain * torch.cat([w, -(w @ w_c)]).unsqueeze(0))  # (1, D + K)
        self.register_buffer("a", -gain * (w @ b).reshape(1))
        self.register_buffer("log_var", var.log().reshape(1))

    def forward(self, inp):
        loc = inp @ self.A.T + self.a
        return loc, self.log_var.expand_as(loc)


def test_importance_sampled_log_p_x_given_c_matches_the_closed_form():
    """A linear-Gaussian CVAE, z ~ N(0, 1), x | z, c ~ N(w z + W_c e_c + b, σ² I), has
    p(x|c) = N(W_c e_c + b, w wᵀ + σ² I). With the exact posterior as guide every
    importance weight equals p(x|c), so pyro_vae.eval.log_likelihood(model, x, c) must give
    the closed form to float precision; a wrong c (or c dropped) would not."""
    from pyro_vae.eval import log_likelihood
    from pyro_vae.likelihoods import Gaussian

    torch.manual_seed(0)
    d_x, k, sigma = 3, 3, 0.5
    decoder = torch.nn.Linear(1 + k, d_x).double()
    w, w_c, b = decoder.weight[:, 0].detach(), decoder.weight[:, 1:].detach(), decoder.bias.detach()
    model = ConditionalVAE(
        _ExactPosterior(w, w_c, b, sigma), decoder, 1, LabelCondition(k), likelihood=Gaussian(d_x, scale=sigma)
    ).double()
    x = torch.randn(6, d_x, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    exact = torch.distributions.MultivariateNormal(
        w_c[:, c].T + b, torch.outer(w, w) + sigma**2 * torch.eye(d_x, dtype=torch.float64)
    ).log_prob(x)
    estimate = log_likelihood(model, x, c, num_samples=50)
    assert torch.allclose(estimate, exact, atol=1e-6)
    assert not torch.allclose(log_likelihood(model, x, (c + 1) % k, num_samples=50), exact, atol=1e-2)


def test_learned_prior_depends_on_c_and_fixed_prior_does_not():
    torch.manual_seed(0)
    learned = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,), prior="learned")
    fixed = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,), prior="fixed")
    h = one_hot(torch.tensor([0, 1]), K)
    p = learned.conditional_prior(h)
    assert p.batch_shape == (2,) and p.event_shape == (Z,)
    assert not torch.allclose(p.mean[0], p.mean[1])
    q = fixed.conditional_prior(h)
    assert torch.equal(q.mean, torch.zeros(2, Z)) and torch.equal(q.stddev, torch.ones(2, Z))


def test_quadrant_likelihood_counts_only_the_hidden_pixels():
    """log p(x_u | z, c) = Σ_{i: m_i = 0} [x_i θ_i − log(1 + e^{θ_i})]; the observed
    quadrants enter only as the condition, never as targets."""
    torch.manual_seed(0)
    model = build_cvae_quadrant(SHAPE, z_dim=Z, hidden_dims=(H,))
    x, _ = _binary_batch(6)
    m = torch.stack([quadrant_mask(k, SHAPE) for k in (1, 2, 3, 1, 2, 3)])
    trace = pyro.poutine.trace(model.model).get_trace(x, m)
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    theta = model.decoder(torch.cat([z, torch.where(m, x, -torch.ones_like(x))], -1))
    expected = ((x * theta - F.softplus(theta)) * (~m)).sum(-1)
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected, atol=1e-5)
    # the condition sees the observed pixels only: changing the hidden ones changes nothing
    x2 = torch.where(m, x, 1 - x)
    h, h2 = model.condition(m, x), model.condition(m, x2)
    assert torch.equal(h, h2)
    assert torch.equal(model.conditional_prior(h).mean, model.conditional_prior(h2).mean)
    assert not torch.equal(model.condition(m, 1 - x), h)


def test_quadrant_masks_follow_pyros_layout():
    sizes = {k: int(quadrant_mask(k).sum()) for k in (1, 2, 3)}
    assert sizes == {1: 196, 2: 392, 3: 588}
    img = lambda k: quadrant_mask(k).view(28, 28)  # noqa: E731
    assert img(1)[14:, :14].all() and img(1).sum() == 196  # bottom-left given
    assert img(2)[:, :14].all() and not img(2)[:, 14:].any()  # left half given
    assert not img(3)[14:, 14:].any()  # bottom-right always to predict
    data = ImageData(x=torch.rand(5, D), image_shape=SHAPE, name="toy")
    q = with_quadrant_masks(data, (1, 3))
    assert q.x.shape == (10, D) and q.y.shape == (10, D)
    assert torch.equal(q.x[:5], data.x) and torch.equal(q.x[5:], data.x)
    assert torch.equal(q.y[0], quadrant_mask(1, SHAPE)) and torch.equal(q.y[7], quadrant_mask(3, SHAPE))


def test_sample_gives_the_requested_class_on_digits():
    """A CVAE trained briefly on scikit-learn's digits draws the class it is asked for,
    judged by a nearest-class-mean rule fitted on the real training images (92% on the
    real validation digits). Chance is 10%; a model that ignored c would sit near it."""
    train = load_dataset("digits", "train", binarize="dynamic")
    real = load_dataset("digits", "train")
    means = torch.stack([real.x[real.y == k].mean(0) for k in range(K)])
    pyro.set_rng_seed(0)
    model = build_cvae(train.image_shape, z_dim=4, hidden_dims=(64,))
    Trainer(model, train, with_labels=True, objective="meanfield", lr=3e-3, batch_size=64).run(15, progress=False)
    c = torch.arange(K).repeat_interleave(20)
    predicted = torch.cdist(model.sample(c=c), means).argmin(1)
    assert (predicted == c).float().mean() >= 0.9
    twos = model.sample(c=2, n=16)
    assert twos.shape == (16, 64)
    assert (torch.cdist(twos, means).argmin(1) == 2).float().mean() >= 0.75


def test_sample_completions_and_reconstructions_shapes():
    torch.manual_seed(0)
    cvae = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,))
    assert cvae.sample(c=2, n=16).shape == (16, D)
    assert cvae.sample(c=torch.tensor([1, 2, 3])).shape == (3, D)
    assert cvae.sample(12).shape == (12, D)
    x, c = _binary_batch(5)
    assert cvae.reconstruct(x, c).shape == (5, D)
    quad = build_cvae_quadrant(SHAPE, z_dim=Z, hidden_dims=(H,))
    m = quadrant_mask(2, SHAPE)
    out = quad.complete(x, m, n=3)
    assert out.shape == (3, 5, D)
    assert torch.equal(out[:, :, m], x[:, m].expand(3, -1, -1))  # the given quadrants are kept


def test_trainer_and_evaluate_loss_on_quadrant_data():
    torch.manual_seed(0)
    data = ImageData(x=(torch.rand(40, D) < 0.3).float(), image_shape=SHAPE, name="toy")
    model = build_cvae_quadrant(SHAPE, z_dim=Z, hidden_dims=(H,))
    train = model.prepare_data(data)
    hist = Trainer(model, train, train, with_labels=True, batch_size=20).run(2, progress=False)
    assert all(math.isfinite(v) for v in hist.train_loss + hist.valid_loss)
    # the −ELBO of the hidden pixels grows with their number: 3, 2, then 1 quadrants to predict
    losses = [evaluate_loss(model, with_quadrant_masks(data, k), with_labels=True) for k in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2] > 0


@pytest.mark.parametrize(
    "labels,match",
    [
        (torch.tensor([0, 10]), "out of range"),
        (torch.tensor([-1, 2]), "out of range"),
        (torch.tensor([0.0, 1.0]), "integers"),
        (torch.zeros(2, 2, dtype=torch.long), "shape"),
    ],
)
def test_bad_labels_are_refused(labels, match):
    cvae = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,))
    x = torch.zeros(2, D)
    with pytest.raises(ValueError, match=match):
        cvae.model(x, labels)
    with pytest.raises(ValueError, match=match):
        cvae.guide(x, labels)


def test_bad_input_gets_clear_errors():
    cvae = build_cvae(SHAPE, z_dim=Z, hidden_dims=(H,))
    quad = build_cvae_quadrant(SHAPE, z_dim=Z, hidden_dims=(H,))
    x = torch.zeros(3, D)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        cvae.guide(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs the labels"):
        cvae.model(x, None)
    with pytest.raises(ValueError, match="n=4 samples asked for but 3 labels"):
        cvae.sample(c=torch.tensor([1, 2, 3]), n=4)
    with pytest.raises(ValueError, match="mask must have shape"):
        quad.model(x, torch.ones(3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0/1"):
        quad.model(x, torch.full((3, D), 0.5))
    with pytest.raises(ValueError, match="needs the image x"):
        quad.model(None, torch.ones(3, D, dtype=torch.bool))
    with pytest.raises(ValueError, match="complete"):
        quad.sample(c=1, n=2)
    with pytest.raises(ValueError, match="unknown prior"):
        build_cvae(SHAPE, prior="vamp")
    with pytest.raises(ValueError, match="needs a prior_net"):
        ConditionalVAE(MLPEncoder(D + K, Z), MLPDecoder(Z + K, D), Z, LabelCondition(K), prior="learned")
    with pytest.raises(ValueError, match="network 'conv' is not supported"):
        build_cvae(SHAPE, network="conv")
    with pytest.raises(ValueError, match="1, 2 or 3"):
        quadrant_mask(4)
    with pytest.raises(DataError, match="no labels"):
        cvae.prepare_data(ImageData(x=torch.zeros(4, D), image_shape=SHAPE, name="unlabelled"))
    with pytest.raises(ValueError, match="out of range"):
        cvae.prepare_data(ImageData(x=torch.zeros(2, D), y=torch.tensor([0, 12]), image_shape=SHAPE))
    assert isinstance(quad.condition, QuadrantCondition)


def test_cli_trains_and_reloads_conditional_runs(tmp_path, capsys):
    out = tmp_path / "cvae"
    assert (
        cli.main(
            [
                "train",
                "--model",
                "cvae",
                "--prior",
                "learned",
                "--epochs",
                "1",
                "--no-progress",
                "--binarize",
                "dynamic",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["model"] == "cvae" and run["model"]["prior"] == "learned"
    model, _ = load_run(out)
    assert isinstance(model, ConditionalVAE) and model.prior_kind == "learned"
    assert model.sample(c=7, n=3).shape == (3, 64)
    assert cli.main(["sample", str(out), "-n", "20", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file() and (out / "samples.png").is_file()

    out = tmp_path / "quad"
    assert (
        cli.main(
            [
                "train",
                "--model",
                "cvae-quadrant",
                "--epochs",
                "1",
                "--no-progress",
                "--binarize",
                "dynamic",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    model, run = load_run(out)
    assert model.prior_kind == "learned" and (out / "completions.png").is_file()  # the quadrant task's default
    assert build_model(run["model"]).condition.dim == 64
    assert (
        cli.main(["train", "--model", "vae", "--prior", "learned", "--epochs", "1", "--out", str(tmp_path / "v")]) == 2
    )
    assert "--prior learned does not apply to --model vae (choose fixed or vamp)" in capsys.readouterr().err
