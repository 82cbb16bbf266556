r"""``Trace_ELBO`` compiled: its loss and gradients as one graph per call signature.

For a fully reparameterized guide, ``Trace_ELBO`` differentiates the surrogate

    loss(θ, φ; x) = −(1/L) Σ_{l=1}^{L} [ Σ_{model sites} log p(·) − Σ_{guide sites} log q(·) ],

each ``log_prob_sum`` scaled as Pyro's handlers (plates, ``poutine.scale``) set it, the
guide's draws z = g_φ(ε, x) reparameterized, L the ELBO's particles.
:class:`CompiledTrace_ELBO` runs Pyro's own ``Trace_ELBO`` machinery (the guide traced,
the model replayed against it, ``compute_log_prob`` and ``compute_score_parts``) once for
each call signature under :func:`pyro_vae.ops.compile.trace_graph`, the backward taken by
``torch.autograd.grad`` inside the trace: one aten graph from (parameters, buffers, data)
to (loss, ∇loss), compiled by inductor and replayed. Pyro's precedent is
``JitTrace_ELBO``; the rules of what is baked into a graph are those of
:mod:`pyro_vae.ops.compile`.

It is a :class:`pyro.infer.Trace_ELBO` with Pyro's methods, so that :class:`pyro.infer.SVI`,
:class:`~pyro_vae.train.Trainer` and evaluation take it as any ELBO:

- ``loss_and_grads`` accumulates ∇loss into each parameter's ``.grad`` and returns the
  loss (a float), reporting the parameters to Pyro's handlers (``pyro.param``), as
  ``Trace_ELBO.loss_and_grads`` does;
- ``differentiable_loss`` returns the loss as a tensor whose backward hands out the
  graph's gradients times the incoming gradient;
- ``loss`` is ``Trace_ELBO.loss`` itself (eager, no gradients).

Before each trace the program runs once eagerly with the caller's Pyro validation flag
(and again on the first call of a signature with validation on, if it was traced with
validation off), on forked random generators, without gradients and with the buffers
restored after it: Pyro's checks and the program's own errors are raised as they are,
and no draw of the compiled steps changes. Replays are not checked: with validation on,
Pyro's checks run once per signature, not on every call. Autoguides that have not met the model yet are built before it,
on the real generator, as their first eager call would build them. A parameter the
program reads that is not one of the modules' (``pyro.param`` from the param store, a
module not passed in) is refused: the graph would hold it as a constant. A guide site
without ``rsample`` is refused (its score-function term needs the ELBO's value in the
graph), as is an ELBO of vectorized particles without ``max_plate_nesting`` after its
guess (Pyro's guess runs the program once eagerly before the first trace).

Random draws come from torch's global generator in the order of eager Pyro, so a run
resumed from its saved generator state continues the same stream. Inductor fuses
elementwise work, so values agree with eager ``Trace_ELBO`` to float rounding.
"""

import math
import numbers

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan
from torch.func import functional_call

from .. import _compat
from ..ops.compile import (
    TracingError,
    buffers_kept,
    forked_rng,
    prepare,
    setup_autoguides,
    side_effects_kept,
    trace_graph,
)


def _is_zero(x):
    return isinstance(x, numbers.Number) and x == 0


class _Surrogate(torch.nn.Module):
    """``forward(args, kwargs)``: ``Trace_ELBO``'s differentiable loss of a fully
    reparameterized guide, −(Σ model ``log_prob_sum`` − Σ guide entropy terms) averaged
    over the ELBO's particles, from Pyro's own traces. The modules the program reads are
    its submodules, so that ``functional_call`` can swap in their parameters."""

    def __init__(self, modules, model, guide, elbo):
        super().__init__()
        self.owners = torch.nn.ModuleList(modules)
        self._program = (model, guide, elbo)

    def forward(self, args, kwargs):
        model, guide, elbo = self._program
        surrogate = 0.0
        for model_trace, guide_trace in _compat.get_traces(elbo, model, guide, args, kwargs):
            particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle + site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                _, score_function, entropy = site["score_parts"]
                if not _is_zero(score_function):
                    raise TracingError(
                        f"guide site {name!r} is not reparameterized (its distribution has no "
                        "rsample, or infer={'reparameterize': False}); its score-function term "
                        "needs the ELBO's value, which a traced graph cannot hold: train it "
                        "without traced"
                    )
                particle = particle - entropy.sum()
            surrogate = surrogate - particle / elbo.num_particles
        return surrogate


class TracedELBO:
    """The loss and gradients of one model/guide pair under a ``Trace_ELBO``, traced once
    per call signature and replayed as one compiled graph: the engine behind
    :class:`CompiledTrace_ELBO`.

    :param modules: the :class:`torch.nn.Module` (or list of them) whose parameters and
        buffers ``model`` and ``guide`` use; those parameters with ``requires_grad`` are
        differentiated.
    :param model: a Pyro model; its structure may depend on the shapes and non-tensor
        values of its arguments, not on the data's values.
    :param guide: its guide, fully reparameterized.
    :param elbo: a :class:`pyro.infer.Trace_ELBO` (default ``Trace_ELBO()``); its
        ``num_particles`` and ``vectorize_particles`` are traced as they are.
    :param float loss_scale: the loss is multiplied by this before differentiation.
    :param bool compile: compile each graph with inductor; False replays the aten graph.
    :param bool onednn: float32 CPU products on oneDNN; None (default): where timed faster
        on this machine (:mod:`pyro_vae.ops.kernels`).
    :param bool rewrite: apply :func:`~pyro_vae.ops.graph_passes.log1p_free`; None
        (default): where timed faster.

    ``traced(*args, **kwargs)`` returns ``(loss, grads)``: the 0-d loss tensor (times
    ``loss_scale``) and one gradient per parameter of :attr:`params`, None for a parameter
    the loss does not depend on (as ``.grad`` stays None in eager Pyro).
    """

    def __init__(self, modules, model, guide, elbo=None, loss_scale=1.0, compile=True, onednn=None, rewrite=None):
        elbo = Trace_ELBO() if elbo is None else elbo
        if type(elbo) not in (Trace_ELBO, CompiledTrace_ELBO):
            raise TracingError(
                f"traced steps reproduce Trace_ELBO (objective 'elbo'), not "
                f"{type(elbo).__name__}; train it without traced"
            )
        if not math.isfinite(loss_scale):
            raise ValueError(f"loss_scale must be a finite number, got {loss_scale}")
        modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
        self._surrogate = _Surrogate(modules, model, guide, elbo)
        self.loss_scale, self.compile = float(loss_scale), bool(compile)
        self.onednn = None if onednn is None else bool(onednn)
        self.rewrite = None if rewrite is None else bool(rewrite)
        #: one entry per traced signature: ``(graph, names of the parameters it differentiates)``
        self.graphs = {}
        #: ``(site name, parameter name)`` of each ``pyro.param`` site the program reads
        self.param_sites = []
        self._validated = set()  # the signatures whose eager run had Pyro's validation on

    @property
    def params(self):
        """The modules' parameters now, by name, in the order of the returned gradients
        (None for those without ``requires_grad`` when traced)."""
        return dict(self._surrogate.named_parameters())

    def _buffers(self):
        return dict(self._surrogate.named_buffers())

    def _check_parameters(self, args, kwargs):
        """Run the program once eagerly with the caller's validation flag (forked
        generators, no gradients, buffers restored, a scoped param store), building any
        parameters a module makes on its first call, and refuse one that reads a
        parameter which is not the modules' (``pyro.param`` from the param store, a
        module not passed in): the graph would hold it as a constant."""
        model, guide, elbo = self._surrogate._program
        setup_autoguides(self._surrogate, args, kwargs)
        with (
            forked_rng(args),
            torch.no_grad(),
            buffers_kept(self._surrogate),
            pyro.get_param_store().scope(),
            poutine.trace(param_only=True) as capture,
        ):
            for _ in _compat.get_traces(elbo, model, guide, args, kwargs):
                pass
        own = {id(t): k for k, t in (*self._surrogate.named_parameters(), *self._surrogate.named_buffers())}
        foreign, sites = [], []
        for name, site in capture.trace.nodes.items():
            value = site["value"]
            key = own.get(id(value.unconstrained() if hasattr(value, "unconstrained") else value))
            if key is None:
                foreign.append(name)
            elif key in self.params:
                sites.append((name, key))
        if foreign:
            raise TracingError(
                f"the program reads parameters that are not the traced modules' "
                f"({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}): a traced graph would "
                "hold them as constants, untrained; make them parameters of the module (a "
                "PyroModule, or nn.Parameter), or run without traced"
            )
        self.param_sites = sites

    def trace(self, *args, **kwargs):
        """Trace (if not yet traced) the graph of this call signature; returns it.

        :raises TracingError: if the program cannot be traced, naming why.
        """
        kwargs, onednn, key = prepare(self._surrogate, self.onednn, args, kwargs)
        if key in self.graphs:
            if key not in self._validated and pyro.poutine.util.is_validation_enabled():
                self._check_parameters(args, kwargs)  # Pyro's checks, once per signature with validation on
                self._validated.add(key)
            return self.graphs[key]
        model, guide, elbo = self._surrogate._program
        if elbo.vectorize_particles and elbo.max_plate_nesting == float("inf"):
            # Pyro's guess runs the program once: eagerly here, drawing from the generator
            # as the first eager call of the ELBO does; the graph is then free of it
            with torch.no_grad(), pyro.get_param_store().scope(), pyro.validation_enabled(False):
                _compat.guess_max_plate_nesting(elbo, model, guide, args, kwargs)
        self._check_parameters(args, kwargs)
        kwargs, onednn, key = prepare(self._surrogate, self.onednn, args, kwargs)  # parameters may be new
        if key in self.graphs:
            return self.graphs[key]
        trained = [k for k, p in self.params.items() if p.requires_grad]
        used = []

        def loss_and_grads(params, buffers, args, kwargs):
            params = {k: v.detach().requires_grad_(k in trained) for k, v in params.items()}
            with pyro.get_param_store().scope(), pyro.validation_enabled(False):
                loss = functional_call(self._surrogate, {**params, **buffers}, (args, kwargs)) * self.loss_scale
            grads = torch.autograd.grad(loss, [params[k] for k in trained], allow_unused=True)
            used[:] = [k for k, g in zip(trained, grads) if g is not None]
            return loss.detach(), [g for g in grads if g is not None]

        params = {k: p.detach() for k, p in self.params.items()}
        with torch.enable_grad():  # the backward is traced, whatever the caller's grad mode
            graph = trace_graph(
                loss_and_grads,
                (params, self._buffers(), args, kwargs),
                self.compile,
                onednn,
                self.rewrite,
                kept=lambda: side_effects_kept(self._surrogate, args),
            )
        self.graphs[key] = (graph, list(used))
        if pyro.poutine.util.is_validation_enabled():
            self._validated.add(key)
        return self.graphs[key]

    def __call__(self, *args, **kwargs):
        graph, names = self.trace(*args, **kwargs)  # the modules' modes and flags are part of its key
        kwargs = dict(sorted(kwargs.items()))
        params = {k: p.detach() for k, p in self.params.items()}
        with torch.no_grad():
            loss, grads = graph(params, self._buffers(), args, kwargs)
        by_name = dict(zip(names, grads))
        return loss, [by_name.get(k) for k in params]


class _Precomputed(torch.autograd.Function):
    """``loss`` as a function of ``params`` whose gradients are already known:
    backward(g) = g · ∂loss/∂θ for each θ."""

    @staticmethod
    def forward(ctx, loss, grads, *params):
        ctx.grads = grads
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return (None, None, *(grad_output * g for g in ctx.grads))


def _modules_of(model, guide):
    """The modules behind ``model`` and ``guide``: each a :class:`torch.nn.Module` or a
    method of one (``vae.model``), without repeats."""
    found = []
    for what, fn in (("model", model), ("guide", guide)):
        m = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if not isinstance(m, torch.nn.Module):
            raise TracingError(
                f"the {what} is neither a torch.nn.Module nor a method of one, so its parameters "
                "are not known before it runs: pass them as CompiledTrace_ELBO(modules=[...])"
            )
        if all(m is not f for f in found):
            found.append(m)
    return found


class CompiledTrace_ELBO(Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` whose ``loss_and_grads`` and ``differentiable_loss``
    run one compiled graph of the loss and its gradients per call signature (see
    :mod:`pyro_vae.objectives.compiled`)::

        elbo = CompiledTrace_ELBO()
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        svi.step(x, num_data=N)

    Takes ``Trace_ELBO``'s arguments, and:

    :param modules: the modules whose parameters and buffers model and guide read; None
        (default): found from model and guide, each a module or a method of one.
    :param bool compile: compile each graph with inductor (default); False replays the
        traced aten graph (slower; for tests).
    :param bool onednn: float32 CPU products on oneDNN; None (default): where timed faster
        for the graph's products on this machine (:mod:`pyro_vae.ops.kernels`).
    :param bool rewrite: the log1p-free rewrite; None (default): where timed faster.

    One graph set is kept per (model, guide) pair, so pass the same callables each call.
    """

    def __init__(self, *args, modules=None, compile=True, onednn=None, rewrite=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.modules = (
            None if modules is None else ([modules] if isinstance(modules, torch.nn.Module) else list(modules))
        )
        self.compile, self.onednn, self.rewrite = bool(compile), onednn, rewrite
        self._engines = {}

    def engine(self, model, guide):
        """The :class:`TracedELBO` of this pair (built on first use)."""
        key = (model, guide)
        if key not in self._engines:
            modules = self.modules if self.modules is not None else _modules_of(model, guide)
            self._engines[key] = TracedELBO(
                modules, model, guide, self, compile=self.compile, onednn=self.onednn, rewrite=self.rewrite
            )
        return self._engines[key]

    def _run(self, model, guide, args, kwargs):
        engine = self.engine(model, guide)
        loss, grads = engine(*args, **kwargs)
        params = engine.params
        for site, name in engine.param_sites:  # what the eager program's pyro.module reports
            pyro.param(site, params[name])
        return loss, list(zip(params.values(), grads))

    def trace(self, model, guide, *args, **kwargs):
        """Trace (if not yet traced) the graph of this pair and call signature, without a
        step: a program that cannot be traced is refused here (:class:`TracingError`)."""
        self.engine(model, guide).trace(*args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss (a float); ∇loss accumulated into each parameter's ``.grad``."""
        loss, grads = self._run(model, guide, args, kwargs)
        for p, g in grads:
            if g is not None and p.requires_grad:
                p.grad = g if p.grad is None else p.grad + g
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a 0-d tensor; its backward gives the graph's gradients."""
        loss, grads = self._run(model, guide, args, kwargs)
        grads = [(p, g) for p, g in grads if g is not None and p.requires_grad]
        return _Precomputed.apply(loss, [g for _, g in grads], *(p for p, _ in grads))
