"""M1+M2: the semi-supervised VAE on the standardized guide means of a fixed VAE."""

import warnings

import pyro
import pytest
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import ImageData
from pyro_vae.models import build_model, build_vae
from pyro_vae.models.build import build_m1m2, check_m1
from pyro_vae.models.ssvae import ssvae_objective
from pyro_vae.runs.files import load_weights
from pyro_vae.runs.resume import make_trainer
from pyro_vae.train import Trainer

SHAPE, K = (1, 3, 3), 3


def m1(seed=0):
    torch.manual_seed(seed)
    return build_vae(SHAPE, z_dim=4, hidden_dims=(6,), likelihood="bernoulli")


def stacked(vae, x_train, seed=1, alpha=1.0):
    torch.manual_seed(seed)
    model = build_m1m2(SHAPE, vae.config, z_dim=2, hidden_dims=(5,), num_classes=K, alpha=alpha)
    model.features.load_vae(vae).standardize(x_train)
    return model


def images(n, seed=2):
    return (torch.rand(n, 9, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def test_features_are_the_standardized_guide_means():
    vae, x = m1(), images(200)
    model = stacked(vae, x)
    with torch.no_grad():
        mu = vae.encode(x).mean
    f = model.features(x)
    torch.testing.assert_close(f, (mu - mu.mean(0)) / mu.std(0))
    torch.testing.assert_close(f.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.std(0), torch.ones(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("labelled", [False, True])
def test_the_loss_on_images_is_m2s_loss_on_the_features(labelled):
    """The stacked model's ELBO (y enumerated, or observed with the α term) equals M2's on f(x)
    with the same draws: M1 adds no site and no term."""
    vae, x = m1(), images(8)
    model = stacked(vae, images(50))
    y = torch.arange(8) % K if labelled else None
    pyro.set_rng_seed(5)
    stack = ssvae_objective().loss(model.model, model.guide, x, y)
    pyro.set_rng_seed(5)
    alone = ssvae_objective().loss(model.m2.model, model.m2.guide, model.features(x), y)
    assert stack == pytest.approx(alone, rel=1e-6)
    # and the trace holds M2's sites only
    trace = pyro.poutine.trace(model.guide).get_trace(x, y)
    plates = {f.name for site in trace.nodes.values() for f in site.get("cond_indep_stack", ())}
    sites = set(trace.stochastic_nodes) - plates
    assert sites == ({"z"} if labelled else {"y", "z"})


def test_training_moves_m2_and_leaves_m1_as_it_was():
    vae, x = m1(), images(64)
    model = stacked(vae, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = model.prepare_data(ImageData(x=x, y=torch.arange(64) % K, image_shape=SHAPE, name="tiny"))
    trainer = make_trainer(model, data, None, TrainConfig(epochs=1, batch_size=16, lr=0.05), with_labels=True)
    assert isinstance(trainer, Trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not registered in the param store" warning: M1 stays in eval mode
        trainer.run(2, progress=False)
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("features."):
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("m2."))
    assert not model.features.training and all(not p.requires_grad for p in model.features.parameters())


def test_classify_and_sample_go_through_m1():
    vae, x = m1(), images(30)
    model = stacked(vae, x)
    torch.testing.assert_close(model.predict_proba(x), model.m2.predict_proba(model.features(x)))
    assert model.classify(x).shape == (30,)
    torch.manual_seed(3)
    s = model.sample(c=1, n=5)
    torch.manual_seed(3)
    f = model.m2.sample(c=1, n=5)
    torch.testing.assert_close(s, vae.decode(model.features.loc + model.features.scale * f))
    assert s.shape == (5, 9) and ((s >= 0) & (s <= 1)).all()


def test_build_model_rebuilds_it_from_its_config():
    vae, x = m1(), images(30)
    model = stacked(vae, x)
    again = build_model(model.config)
    load_weights(again, model.state_dict())
    torch.testing.assert_close(again.predict_proba(x), model.predict_proba(x))
    assert again.config == model.config and model.config["m1"] == vae.config


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(model="hvae"), "must be a VAE"),
        (dict(prior="vamp"), "prior N(0, I)"),
        (dict(guide="flow"), "flow guide"),
    ],
)
def test_m1_that_cannot_be_refuses(change, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_m1(dict(m1().config, **change))


def test_two_stacks_in_one_process_train_their_own_parameters_with_svi():
    """Plain SVI with Pyro's global param store: each stack registers M2's networks under a name
    of its own, so stepping one never moves, or replaces, the other's."""
    from pyro.infer import SVI, TraceEnum_ELBO

    pyro.clear_param_store()
    vae, x = m1(), images(8)
    a, b = stacked(vae, x, seed=1), stacked(vae, x, seed=2)
    b_before = {k: v.clone() for k, v in b.state_dict().items()}
    SVI(a.model, a.guide, pyro.optim.Adam({"lr": 0.1}), TraceEnum_ELBO(max_plate_nesting=1)).step(x, None)
    assert all(torch.equal(b.state_dict()[k], v) for k, v in b_before.items())
    a_after = {k: v.clone() for k, v in a.state_dict().items()}
    SVI(b.model, b.guide, pyro.optim.Adam({"lr": 0.1}), TraceEnum_ELBO(max_plate_nesting=1)).step(x, None)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in a_after.items())
    assert any(not torch.equal(b.state_dict()[k], v) for k, v in b_before.items())
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith(a._pyro_name + ".m2") for n in names) and any(
        n.startswith(b._pyro_name + ".m2") for n in names
    )
    pyro.clear_param_store()
