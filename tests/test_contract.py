import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import AmortizedGuide, ModelGuide, build_model, fit
from pyro_vae.contract import Contract, PyroVAE, contract
from pyro_vae.data import ImageData
from pyro_vae.train.trainer import Trainer


def built(model, **kw):
    return build_model({"model": model, "image_shape": [1, 8, 8], "z_dim": 4, "hidden_dims": [16], **kw})


@pytest.mark.parametrize(
    "kind, conditional, num_classes, classifies",
    [
        ("vae", False, None, False),
        ("ae", False, None, False),
        ("hvae", False, None, False),
        ("cvae", True, 10, False),
        ("cvae-quadrant", True, None, False),
        ("ssvae", True, 10, True),
    ],
)
def test_the_packages_models_state_what_they_offer(kind, conditional, num_classes, classifies):
    kw = {"network": "mlp", "hidden_dims": [16, 16]} if kind == "hvae" else {}
    c = contract(built(kind, **kw))
    assert isinstance(c, Contract)
    assert (c.conditional, c.num_classes, c.classifies) == (conditional, num_classes, classifies)
    assert c.image_shape == (1, 8, 8) and c.x_dim == 64
    assert c.config["model"] == kind
    assert c.setup is None and c.check_parameters is None
    assert c.fixed_batch_size is False


def test_a_users_model_with_an_amortized_guide_offers_setup_and_its_parameter_check():
    def model(x, num_data=None):
        with pyro.plate("data", x.shape[0], subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(x.shape), 1.0).to_event(1), obs=x)

    c = contract(ModelGuide(model, AmortizedGuide(model, hidden_dims=())))
    assert c.setup is not None and c.check_parameters is not None
    assert c.config is None and c.x_dim is None and c.check_support is None
    assert c.takes_num_data and not c.conditional


def test_the_likelihood_check_and_a_decaying_baseline_are_found():
    vae = built("vae", guide_kwargs={"reparameterized": False, "baseline": "decaying"})
    c = contract(vae)
    assert c.fixed_batch_size
    assert c.check_support is not None
    with pytest.raises(ValueError):
        c.check_support(torch.full((2, 64), 0.5))  # Bernoulli: grey levels are outside its support
    c.check_support(torch.ones(2, 64))


class NoGuide(torch.nn.Module):
    def model(self, x):
        pass


@pytest.mark.parametrize("thing", [NoGuide(), object(), torch.nn.Linear(2, 2)])
def test_what_is_not_a_model_guide_pair_is_refused_in_one_line(thing):
    assert not isinstance(thing, PyroVAE) or not callable(getattr(thing, "guide", None))
    with pytest.raises(TypeError, match="not a Pyro model/guide pair") as e:
        contract(thing)
    assert "\n" not in str(e.value)
    data = ImageData(torch.zeros(4, 2), None, (1, 1, 2), name="tiny")
    with pytest.raises(TypeError, match="not a Pyro model/guide pair"):
        fit(thing, data, epochs=1, progress=False)


def test_the_trainer_reads_the_contract_once_at_construction():
    """A trainer built from a model keeps the capabilities it found then: removing the
    likelihood's check afterwards changes nothing the trainer does."""
    vae = built("vae")
    data = ImageData(torch.bernoulli(torch.full((20, 64), 0.3)), None, (1, 8, 8), name="tiny")
    trainer = Trainer(vae, data, batch_size=10)
    assert trainer.contract == contract(vae)
    vae.likelihood.check = None  # a probe on every step would now fail
    trainer.run(1, progress=False)
    assert trainer.step_count == 2
