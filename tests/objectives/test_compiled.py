"""``CompiledTrace_ELBO`` and its engine ``TracedELBO``: Trace_ELBO's loss and gradients
replayed from one traced graph per call signature, and the programs it refuses. The graphs here are replayed as traced
(``compile=False``), which is exact; ``tests/train/test_fast.py`` holds the compiled
trainer (``traced=True``) to plain ``Trace_ELBO`` and to a bit-identical resume."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import build_vae, load_dataset
from pyro_vae.amortized import AmortizedGuide, ModelGuide
from pyro_vae.objectives import CompiledTrace_ELBO, TracedELBO, TracingError
from pyro_vae.ops.compile import TracedFunction
from pyro_vae.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**kw):
    torch.manual_seed(0)
    return build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,), **kw)


@pytest.fixture(scope="module")
def x():
    train = load_dataset("digits", "train", binarize="static")
    return train.x[:48]


def eager(vae, elbo, x, seed, **kwargs):
    pyro.set_rng_seed(seed)
    for p in vae.parameters():
        p.grad = None
    with pyro.get_param_store().scope():
        loss = elbo.differentiable_loss(vae.model, vae.guide, x, **kwargs) / 1000
        loss.backward()
    return loss.item(), [p.grad for p in vae.parameters()]


@pytest.mark.parametrize(
    "elbo",
    [
        Trace_ELBO(),
        Trace_ELBO(num_particles=3),
        Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
    ],
    ids=["one particle", "3 particles", "4 vectorized"],
)
@pytest.mark.parametrize(
    "guide, prior", [("diagonal", None), ("full", None), ("flow", None), ("diagonal", "vamp"), ("flow", "vamp")]
)
def test_same_loss_and_gradients_as_trace_elbo(x, elbo, guide, prior):
    vae = build(guide=guide, prior=prior, **({"pseudo_inputs": 7} if prior else {}))
    ref_loss, ref_grads = eager(vae, elbo, x, seed=7, num_data=1000)
    traced = TracedELBO(vae, vae.model, vae.guide, elbo, loss_scale=1 / 1000, compile=False)
    pyro.set_rng_seed(7)
    loss, grads = traced(x, num_data=1000)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)
    for (name, _), g, r in zip(vae.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7, msg=name)


def test_replays_draw_afresh_and_consume_the_generator_as_eager_pyro(x):
    """Each replay draws new noise from torch's global generator, the same draws eager
    Pyro makes: after two replays the generator is where two eager steps leave it."""
    vae = build()
    traced = TracedELBO(vae, vae.model, vae.guide, loss_scale=1 / 1000, compile=False)
    pyro.set_rng_seed(1)
    first, second = traced(x, num_data=1000)[0].item(), traced(x, num_data=1000)[0].item()
    after_traced = torch.get_rng_state()
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(1)
        e1 = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=1000) / 1000
        e2 = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=1000) / 1000
    assert first != second
    assert (first, second) == pytest.approx((e1, e2), rel=1e-6)
    assert torch.equal(torch.get_rng_state(), after_traced)


def test_one_graph_per_signature(x):
    vae = build()
    traced = TracedELBO(vae, vae.model, vae.guide, compile=False)
    traced(x, num_data=1000)
    traced(x + 0, num_data=1000)  # new values, same signature: replayed
    assert len(traced.graphs) == 1
    traced(x[:10], num_data=1000)  # new batch size
    traced(x, num_data=2000)  # new scale N/B
    assert len(traced.graphs) == 3
    pyro.set_rng_seed(3)
    loss = traced(x, num_data=2000)[0].item()
    pyro.set_rng_seed(3)
    with pyro.get_param_store().scope():
        assert loss == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x, num_data=2000), rel=1e-6)


def test_a_program_that_reads_the_data_values_is_refused(x):
    vae = build()

    def model(x, num_data=None):
        if x.sum() > 0:  # the structure depends on the data's values: a trace cannot replay it
            return vae.model(x, num_data=num_data)
        return vae.model(x[:1], num_data=num_data)

    with pytest.raises(TracingError, match=r"cannot be traced.*test_compiled.py:\d+: if x.sum\(\) > 0.*data's values"):
        TracedELBO(vae, model, vae.guide, compile=False).trace(x, num_data=1000)


def test_a_score_function_site_is_refused(x):
    vae = build(guide_kwargs={"reparameterized": False})
    with pytest.raises(TracingError, match="guide site 'z' is not reparameterized"):
        TracedELBO(vae, vae.model, vae.guide, compile=False).trace(x, num_data=1000)


def test_other_elbos_are_refused():
    vae = build()
    with pytest.raises(TracingError, match="Trace_ELBO.*not TraceMeanField_ELBO"):
        TracedELBO(vae, vae.model, vae.guide, TraceMeanField_ELBO())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"objective": "meanfield"}, "not TraceMeanField_ELBO"),
        ({"kl_warmup": 2}, "kl_warmup"),
        ({"compile": True}, "compile"),
    ],
)
def test_the_trainer_refuses_what_it_cannot_trace(kw, match):
    train = load_dataset("digits", "train", binarize="static")
    with pytest.raises(ValueError, match=match):
        Trainer(build(), train, traced=True, **kw)


class UserModel(torch.nn.Module):
    """A user's Pyro model without the package's classes: Bernoulli pixels from a 2-d z,
    and no ``num_data`` keyword (the trainer then scales every site by N/B)."""

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.Linear(2, 64)

    def model(self, x):
        pyro.module("user_model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


def user_pair():
    torch.manual_seed(0)
    user = UserModel()
    return ModelGuide(user.model, AmortizedGuide(user.model, hidden_dims=(16,)))


def test_a_users_model_trains_traced_as_it_does_eagerly():
    """ModelGuide(user model, AmortizedGuide): the traced trainer takes the same steps as
    the eager one."""
    train = load_dataset("digits", "train", binarize="static")
    params = []
    for traced in (False, True):
        pair = user_pair()
        trainer = Trainer(pair, train, batch_size=499, seed=0, traced=traced)
        trainer.train_epoch()
        params.append([p.detach().clone() for p in pair.parameters()])
    for p, q in zip(*params):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_pyro_validation_still_fires_on_the_first_batch():
    """With validation on, the eager run before the first trace of each shape runs Pyro's
    checks; data outside the likelihood's support is then refused as in eager Pyro, when
    the trainer is built, or at the first step of a shape traced with validation off."""
    train = load_dataset("digits", "train")  # grey levels, not binary
    x = train.x[:499]
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        Trainer(user_pair(), train, batch_size=499, seed=0, traced=True)
    with pyro.validation_enabled(False):
        trainer = Trainer(user_pair(), train, batch_size=499, seed=0, traced=True)
        assert torch.isfinite(torch.tensor(trainer.step(x)))  # unchecked, as eager Pyro without validation
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        trainer.step(x)  # traced without validation: checked on its first call with it


def test_the_trainers_traced_graph_computes_its_products_with_onednn_and_gives_aten_s_values(x):
    """The default traced graph on CPU holds oneDNN products only; its loss and gradients
    equal those of the graph with aten's products (onednn=False) to float32 rounding."""
    vae = build()
    out = {}
    for onednn in (False, True):
        traced = TracedELBO(vae, vae.model, vae.guide, loss_scale=1 / 1000, compile=False, onednn=onednn)
        pyro.set_rng_seed(3)
        out[onednn] = traced(x, num_data=1000)
        graph = next(iter(traced.graphs.values()))[0]
        targets = {n.target for n in graph.graph.nodes if n.op == "call_function"}
        assert (torch.ops.pyro_vae.onednn_matmul.default in targets) == onednn
        assert (targets & {torch.ops.aten.mm.default, torch.ops.aten.addmm.default} == set()) == onednn
    assert TracedELBO(vae, vae.model, vae.guide).onednn is None  # the default: chosen by timing
    traced = TracedELBO(vae, vae.model, vae.guide, loss_scale=1 / 1000, compile=False)
    with torch.backends.mkldnn.flags(enabled=False):  # turned off by the user: aten's products
        traced(x, num_data=1000)
    graph = next(iter(traced.graphs.values()))[0]
    assert torch.ops.pyro_vae.onednn_matmul.default not in {n.target for n in graph.graph.nodes}
    assert out[True][0].item() == pytest.approx(out[False][0].item(), rel=1e-6)
    for g_dnn, g_aten in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(g_dnn, g_aten, rtol=1e-5, atol=1e-7)


def test_a_conditional_vae_traces_and_its_label_check_runs_under_validation():
    """The class-conditional VAE checks its labels' values per call only under Pyro's
    validation (as Pyro checks supports), so its step traces; the traced trainer's eager
    validation pass still refuses a label out of range."""
    from pyro_vae.models import build_cvae

    train = load_dataset("digits", "train", binarize="static")
    torch.manual_seed(0)
    cvae = build_cvae(train.image_shape, z_dim=2, hidden_dims=(16,))
    x, c = train.x[:48], train.y[:48]
    pyro.set_rng_seed(2)
    with pyro.get_param_store().scope():
        ref = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, c, num_data=1000) / 1000
    ref_grads = torch.autograd.grad(ref, list(cvae.parameters()))
    traced = TracedELBO(cvae, cvae.model, cvae.guide, loss_scale=1 / 1000, compile=False)
    pyro.set_rng_seed(2)
    loss, grads = traced(x, c, num_data=1000)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    trainer = Trainer(cvae, cvae.prepare_data(train), batch_size=499, with_labels=True, traced=True)
    bad = c.clone()
    bad[3] = 10
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="out of range"):
        trainer.step(x, bad)


class DropoutModel(torch.nn.Module):
    """A user's model with dropout in its decoder: its train/eval mode changes the program."""

    def __init__(self):
        super().__init__()
        self.decoder = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 64))
        self.encoder = torch.nn.Linear(64, 4)

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def eager_loss(m, x, seed, elbo=None):
    pyro.set_rng_seed(seed)
    with pyro.get_param_store().scope():
        return (elbo or Trace_ELBO()).differentiable_loss(m.model, m.guide, x)


def test_train_and_eval_modes_are_graphs_of_their_own(x):
    torch.manual_seed(0)
    m = DropoutModel().eval()
    traced = TracedELBO(m, m.model, m.guide, compile=False)
    traced(x)
    m.train()
    pyro.set_rng_seed(4)
    loss = traced(x)[0]
    assert len(traced.graphs) == 2
    assert loss.item() == pytest.approx(eager_loss(m, x, 4).item(), rel=1e-6)  # with dropout, as eager
    m.eval()
    pyro.set_rng_seed(4)
    assert traced(x)[0].item() == pytest.approx(eager_loss(m, x, 4).item(), rel=1e-6)


def test_a_parameter_frozen_later_gets_no_gradient(x):
    torch.manual_seed(0)
    m = DropoutModel().eval()
    traced = TracedELBO(m, m.model, m.guide, compile=False)
    assert all(g is not None for g in traced(x)[1])
    m.encoder.weight.requires_grad_(False)
    grads = dict(zip(traced.params, traced(x)[1]))
    assert grads["owners.0.encoder.weight"] is None and grads["owners.0.encoder.bias"] is not None


def test_the_plate_nesting_guess_draws_nothing_in_the_graph(x):
    """An ELBO without max_plate_nesting guesses it by running the program once: eagerly,
    before the first trace, as eager Pyro's first call does, so the replays draw what
    eager steps draw and no draw of the guess is left in the graph."""
    torch.manual_seed(0)
    m = DropoutModel().eval()
    elbo = lambda: Trace_ELBO(num_particles=3, vectorize_particles=True)  # noqa: E731
    traced = TracedELBO(m, m.model, m.guide, elbo(), compile=False)
    pyro.set_rng_seed(6)
    got = [traced(x)[0].item() for _ in range(2)]
    state = torch.get_rng_state()
    ref = elbo()
    pyro.set_rng_seed(6)
    with pyro.get_param_store().scope():
        want = [ref.differentiable_loss(m.model, m.guide, x).item() for _ in range(2)]
    assert got == pytest.approx(want, rel=1e-6)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_call_inside_pyro_handlers_is_refused_and_a_bug_is_the_programs_own_error(x):
    from pyro import poutine

    torch.manual_seed(0)
    m = DropoutModel().eval()
    traced = TracedELBO(m, m.model, m.guide, compile=False)
    with poutine.scale(scale=2.0), pytest.raises(TracingError, match="inside Pyro handlers.*ScaleMessenger"):
        traced(x)

    def broken(x, num_data=None):
        raise KeyError("no such site")

    with pytest.raises(KeyError, match="no such site"):
        TracedELBO(m, broken, m.guide, compile=False)(x)


class _Regression(torch.nn.Module):
    """y ~ Normal(lin(x) · w, σ): a module of Pyro model code as a user writes it."""

    def __init__(self, param_sigma=False):
        super().__init__()
        self.lin, self.param_sigma = torch.nn.Linear(3, 1), param_sigma

    def model(self, x, y):
        sigma = (
            pyro.param("sigma", torch.tensor(1.0), constraint=dist.constraints.positive) if self.param_sigma else 1.0
        )
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("d", x.shape[0]):
            pyro.sample("y", dist.Normal(self.lin(x).squeeze(-1) * w, sigma), obs=y)


def _regression_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 3, generator=g), torch.randn(20, generator=g)


def test_a_parameter_from_the_param_store_is_refused_not_frozen():
    """pyro.param from Pyro's param store is not the module's: the graph would hold its
    initial value as a constant, so tracing is refused, naming it."""
    from pyro.infer.autoguide import AutoNormal

    m = _Regression(param_sigma=True)
    guide = AutoNormal(m.model)
    with pytest.raises(TracingError, match=r"not the traced modules' \(sigma\)"):
        TracedELBO(torch.nn.ModuleList([m, guide]), m.model, guide)(*_regression_data())
    outside = AutoNormal(_Regression().model)  # a guide that is not part of the module
    with pytest.raises(TracingError, match="AutoNormal.locs.w"):
        TracedELBO(_Regression(), _Regression().model, outside)(*_regression_data())


def test_a_guide_built_on_its_first_call_and_a_parameter_replaced_later_are_the_modules_own():
    """An autoguide built lazily, inside the module, is built for real before tracing (its
    parameters are real and differentiated); a parameter replaced after the TracedELBO was
    made is the one read; the first trace may come under torch.no_grad()."""
    from pyro.infer.autoguide import AutoNormal

    torch.manual_seed(0)
    m = _Regression()
    guide, twin = AutoNormal(m.model), AutoNormal(m.model)  # the twin is built eagerly
    pair = torch.nn.ModuleDict({"m": m, "g": guide})
    traced = TracedELBO(pair, m.model, guide, compile=False)
    x, y = _regression_data()
    with torch.no_grad():
        pyro.set_rng_seed(2)
        loss, grads = traced(x, y)
        after_traced = torch.randn(3)
    assert all(type(p) is torch.nn.Parameter for p in pair.parameters())
    assert len(grads) == 4 and all(g is not None for g in grads)
    pyro.set_rng_seed(2)
    with pyro.get_param_store().scope():  # the first eager call: built, then stepped, same draws
        assert loss.item() == pytest.approx(Trace_ELBO().loss(m.model, twin, x, y), rel=1e-6)
    torch.testing.assert_close(torch.randn(3), after_traced)
    m.lin.bias = torch.nn.Parameter(torch.tensor([3.0]))
    pyro.set_rng_seed(2)
    loss = traced(x, y)[0].item()
    pyro.set_rng_seed(2)
    with pyro.get_param_store().scope():
        assert loss == pytest.approx(Trace_ELBO().loss(m.model, guide, x, y), rel=1e-6)


def test_errors_of_the_program_are_its_own_and_reading_values_is_refused():
    """A shape bug raises the program's own eager error, not the fake tensors'; .numpy()
    is a read of the data's values; a NumPy array argument is refused in one line."""
    import numpy as np

    class Bug(_Regression):
        def model(self, x, y):
            with pyro.plate("d", x.shape[0]):
                pyro.sample("y", dist.Normal(self.lin(x.t()).sum(), 1.0), obs=y)

        def guide(self, x, y):
            pass

    bug = Bug()
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        TracedELBO(bug, bug.model, bug.guide)(*_regression_data())

    class Reads(Bug):
        def model(self, x, y):
            shift = float(x.numpy().mean())
            with pyro.plate("d", x.shape[0]):
                pyro.sample("y", dist.Normal(self.lin(x).squeeze(-1) + shift, 1.0), obs=y)

    reads = Reads()
    with pytest.raises(TracingError, match=r"numpy\(\).*test_traced.py.*reads the data|numpy\(\) is not supported"):
        TracedELBO(reads, reads.model, reads.guide)(*_regression_data())
    with pytest.raises(TracingError, match="ndarray is neither a tensor nor hashable"):
        TracedELBO(reads, reads.model, reads.guide)(*_regression_data(), extra=np.zeros(3))


def test_log_likelihood_traced_with_a_guide_built_on_its_first_call_and_validation_off():
    """Without Pyro's validation too, a guide that builds itself on its first call is built
    for real before tracing: the traced estimates are those of eager evaluation."""
    from pyro_vae.amortized import AmortizedGuide
    from pyro_vae.eval import log_likelihood

    torch.manual_seed(0)
    dec = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Softplus(), torch.nn.Linear(16, 12))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    x = torch.randn(6, 12)
    guide, twin = AmortizedGuide(model, hidden_dims=(8,)), AmortizedGuide(model, hidden_dims=(8,))
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(4)
        traced = log_likelihood(model, guide, x, num_samples=50, chunk_size=10, traced=True)
        assert all(type(p) is torch.nn.Parameter for p in guide.parameters())
        pyro.set_rng_seed(4)  # the twin built by its first eager call, from the same draws
        eager = log_likelihood(model, twin, x, num_samples=50, chunk_size=10)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-4)


def test_the_eager_run_before_a_trace_leaves_batch_norm_statistics_as_they_were():
    """The eager run that checks the program (and builds lazy parameters) before each trace
    updates no buffer: a batch-norm layer's running statistics move only with the steps."""

    class Normed(_Regression):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3)

        def model(self, x, y):
            with pyro.plate("d", x.shape[0]):
                pyro.sample("y", dist.Normal(self.lin(self.norm(x)).squeeze(-1), 1.0), obs=y)

        def guide(self, x, y):
            pass

    m = Normed()
    x, y = _regression_data()
    TracedELBO(m, m.model, m.guide, compile=False).trace(x, y)
    assert m.norm.num_batches_tracked.item() == 0
    torch.testing.assert_close(m.norm.running_mean, torch.zeros(3))
    traced = TracedFunction(m, lambda x: m.norm(x), compile=False)
    traced(x)
    assert m.norm.num_batches_tracked.item() == 1  # the replay itself is one call


# ---- CompiledTrace_ELBO: Pyro's ELBO interface --------------------------------------------
def _svi_params(elbo, x, steps=3):
    """The VAE's parameters after ``steps`` steps of pyro.infer.SVI with ``elbo``."""
    vae = build()
    pyro.set_rng_seed(11)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        losses = [svi.step(x, num_data=1000) for _ in range(steps)]
    return losses, [p.detach().clone() for p in vae.parameters()]


def test_pyro_svi_steps_with_the_compiled_elbo_as_with_trace_elbo(x):
    """SVI finds the parameters through the pyro.param sites the compiled ELBO reports and
    steps them as with Trace_ELBO: same losses and parameters to float rounding."""
    eager_losses, eager = _svi_params(Trace_ELBO(), x)
    losses, compiled = _svi_params(CompiledTrace_ELBO(compile=False), x)
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert not all(torch.equal(p, q) for p, q in zip(eager, build().parameters()))  # they moved
    for p, q in zip(eager, compiled):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["differentiable_loss", "loss_and_grads"])
def test_differentiable_loss_and_loss_and_grads_give_trace_elbos_gradients(x, method):
    vae = build()
    ref_loss, ref_grads = eager(vae, Trace_ELBO(), x, seed=4, num_data=1000)
    elbo = CompiledTrace_ELBO(compile=False)
    for p in vae.parameters():
        p.grad = torch.ones_like(p) if method == "loss_and_grads" else None  # loss_and_grads accumulates
    pyro.set_rng_seed(4)
    with pyro.get_param_store().scope():
        if method == "differentiable_loss":
            loss = elbo.differentiable_loss(vae.model, vae.guide, x, num_data=1000) / 1000
            loss.backward()
            loss = loss.item()
        else:
            loss = elbo.loss_and_grads(vae.model, vae.guide, x, num_data=1000) / 1000
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for p, g in zip(vae.parameters(), ref_grads):
        expected = g * 1000 + 1 if method == "loss_and_grads" else g
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-4)


def test_the_loss_alone_is_trace_elbos_and_a_plain_function_needs_its_modules(x):
    vae = build()
    pyro.set_rng_seed(2)
    with pyro.get_param_store().scope():
        expected = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=1000)
        pyro.set_rng_seed(2)
        assert CompiledTrace_ELBO().loss(vae.model, vae.guide, x, num_data=1000) == expected
        with pytest.raises(TracingError, match=r"the model is neither a torch.nn.Module nor a method of one"):
            CompiledTrace_ELBO(compile=False).loss_and_grads(
                lambda x, num_data: vae.model(x, num_data), vae.guide, x, num_data=1000
            )
        elbo = CompiledTrace_ELBO(compile=False, modules=vae)  # named, a plain function traces
        assert math.isfinite(
            elbo.loss_and_grads(lambda x, num_data: vae.model(x, num_data), vae.guide, x, num_data=1000)
        )


def test_the_trainer_steps_a_compiled_elbo_through_its_plain_path(x):
    """traced=True makes the objective a CompiledTrace_ELBO (the same particles); the
    Trainer has no traced branch of its own, and a compiled ELBO passed as the objective
    trains as traced=True does."""
    train = load_dataset("digits", "train", binarize="static")
    runs = []
    for kw in (dict(traced=True), dict(objective=CompiledTrace_ELBO(max_plate_nesting=1))):
        vae = build()
        trainer = Trainer(vae, train, batch_size=499, seed=0, **kw)
        assert isinstance(trainer.objective, CompiledTrace_ELBO) and trainer.differentiable
        trainer.train_epoch()
        runs.append([p.detach().clone() for p in vae.parameters()])
    for p, q in zip(*runs):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert not hasattr(trainer, "traced")
