"""The Trainer's speed options (``fused``, ``compile``, ``traced``) compute what plain Pyro
computes: the same loss and gradients as ``Trace_ELBO`` on a fixed seeded batch, the same
Adam update up to float rounding, and a resumed run bit-identical to the run never stopped.
"""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from run_helpers import round_trip

from pyro_vae import build_vae, load_dataset
from pyro_vae.cli import build_parser
from pyro_vae.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = [
    {"fused": True},
    {"compile": True},
    {"fused": True, "compile": True},
    {"traced": True},
    {"traced": True, "fused": True},
]


def ids(kw):
    return "+".join(kw)


def data():
    return load_dataset("digits", "train", binarize="static")


def build(seed=0):
    torch.manual_seed(seed)
    return build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))


def batch(train, size=64):
    return train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:size]]


def plain_loss_and_grads(train, x):
    """−ELBO per data point and its gradients by plain ``Trace_ELBO`` on a fresh model."""
    vae = build()
    pyro.set_rng_seed(7)
    with pyro.get_param_store().scope():
        loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, num_data=len(train)) / len(train)
        loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in vae.named_parameters()}


@pytest.mark.parametrize("kw", SETTINGS, ids=ids)
def test_same_loss_and_gradients_as_trace_elbo(kw):
    train = data()
    x = batch(train)
    ref_loss, ref_grads = plain_loss_and_grads(train, x)
    vae = build()
    trainer = Trainer(vae, train, batch_size=64, seed=0, **kw)
    if kw.get("compile"):
        assert trainer.vae.decoder._compiled_call_impl is not None
        assert trainer.vae.q.encoder._compiled_call_impl is not None
    pyro.set_rng_seed(7)
    loss = trainer.step(x)  # the step leaves this step's gradients in .grad
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, p in trainer.vae.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kw", SETTINGS, ids=ids)
def test_same_steps_as_the_plain_trainer(kw):
    """Twenty steps with the option give the parameters of twenty plain steps, up to rounding."""
    train = data()
    plain, fast = Trainer(build(), train, batch_size=64, seed=0), Trainer(build(), train, batch_size=64, seed=0, **kw)
    for t in (plain, fast):
        pyro.set_rng_seed(11)
        for xb, _ in list(train.batches(64, generator=torch.Generator().manual_seed(0)))[:20]:
            t.step(xb)
    for (name, p), q in zip(plain.vae.named_parameters(), fast.vae.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


class Stop(Exception):
    pass


@pytest.mark.parametrize("kw", SETTINGS, ids=ids)
def test_resume_is_bit_identical(kw):
    train = data()
    ref = Trainer(build(), train, batch_size=64, seed=0, **kw)
    ref.run(2, progress=False)

    first = Trainer(build(), train, batch_size=64, seed=0, **kw)
    saved = {}

    def on_step(t):
        if t.step_count == 30:  # mid-epoch 2
            saved["state"] = round_trip(t.state_dict())
            raise Stop

    with pytest.raises(Stop):
        first.run(2, progress=False, step_callback=on_step)
    resumed = Trainer(build(1), train, batch_size=64, seed=5, **kw)  # other weights and seed: all overwritten
    resumed.load_state_dict(saved["state"])
    resumed.run(1, progress=False)
    for (name, p), q in zip(ref.vae.named_parameters(), resumed.vae.parameters()):
        assert torch.equal(p, q), name
    assert resumed.history.train_loss == ref.history.train_loss


def test_fused_is_the_trainers_setting_after_loading_any_checkpoint():
    train = data()
    plain = Trainer(build(), train, batch_size=64, seed=0)
    plain.train_epoch()
    fused = Trainer(build(), train, batch_size=64, seed=0, fused=True)
    fused.load_state_dict(round_trip(plain.state_dict()))
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    back = Trainer(build(), train, batch_size=64, seed=0)
    back.load_state_dict(round_trip(fused.state_dict()))
    assert not any(g["fused"] for g in back.optimizer.param_groups)
    for t in (fused, back):  # both step on from the loaded state, with the same draws
        pyro.set_rng_seed(2)
        t.train_epoch()
    for p, q in zip(fused.vae.parameters(), back.vae.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_compile_needs_networks_to_compile():
    class NoNetworks(torch.nn.Module):
        def model(self, x):
            pass

        def guide(self, x):
            pass

    with pytest.raises(ValueError, match="encoder.*decoder"):
        Trainer(NoNetworks(), data(), compile=True)


def test_train_flags():
    args = build_parser().parse_args(["train", "--dataset", "digits", "--fused", "--compile"])
    assert args.fused and args.compile
    args = build_parser().parse_args(["train", "--dataset", "digits"])
    assert not args.fused and not args.compile
