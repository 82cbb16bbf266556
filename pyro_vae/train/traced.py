"""Trace once, replay: ``Trace_ELBO``'s loss and gradients as one compiled graph.

For a fully reparameterized guide, ``Trace_ELBO`` differentiates the surrogate

    loss(θ, φ; x) = −[ Σ_{model sites} log p(·) − Σ_{guide sites} log q(·) ],

each ``log_prob_sum`` scaled as Pyro's handlers (plates, ``poutine.scale``) set it, the
guide's draws z = g_φ(ε, x) reparameterized. :class:`TracedELBO` runs Pyro's own
``Trace_ELBO`` machinery (``_get_traces``: the guide traced, the model replayed against
it, ``compute_log_prob`` and ``compute_score_parts``) once for each call signature under
``make_fx`` with fake tensors, with the module's parameters and buffers swapped in by
``torch.func.functional_call`` and the backward taken by ``torch.autograd.grad``. The
result is one aten graph from (parameters, buffers, data) to (loss, gradients), which
inductor compiles. Later calls with the same signature replay it; Pyro's Python does not
run again.

What Pyro decided at trace time is part of the graph: the plates' sizes, the scale N/B,
the sites and their distributions, whether a site is observed. The graph is traced
again for each new *signature*: the shapes, dtypes and devices of the tensor arguments
and the values of every other argument (``num_data=N`` included). Values of the data are
never seen while tracing (fake tensors), so a program whose Python depends on them
(``.item()``, ``if x.sum() > 0``, data-dependent shapes) cannot be traced and is refused
with :class:`TracingError`, as is a guide site without ``rsample`` (its score-function
term would need the ELBO's value in the graph). Tensors that a module holds as plain
attributes, neither parameters nor buffers (a flow's fixed permutation), enter the graph
as the constants they are at trace time.

Random draws: the graph calls the same aten random ops in the same order as eager Pyro,
and inductor is asked to keep them as calls into torch's global generator
(``fallback_random``), so a step consumes the generator as the eager step does and a run
resumed from its saved generator state continues the same stream. The compiled graph
fuses elementwise work, so values agree with eager ``Trace_ELBO`` to float rounding, not
bit for bit.
"""

import math
import numbers

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch.func import functional_call


class TracingError(ValueError):
    """The model/guide pair cannot be traced into one graph (see :mod:`pyro_vae.train.traced`)."""


class _Surrogate(torch.nn.Module):
    """``forward(args, kwargs)``: ``Trace_ELBO``'s differentiable loss of a fully
    reparameterized guide, −(Σ model ``log_prob_sum`` − Σ guide entropy terms) averaged
    over the ELBO's particles, from Pyro's own traces. A module around ``owner`` (the
    model's module) so that ``functional_call`` can swap in its parameters."""

    def __init__(self, owner, model, guide, elbo):
        super().__init__()
        self.owner = owner
        self._program = (model, guide, elbo)

    def forward(self, args, kwargs):
        model, guide, elbo = self._program
        surrogate = 0.0
        for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
            particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle + site["log_prob_sum"]
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                _, score_function, entropy = site["score_parts"]
                if not _is_zero(score_function):
                    raise TracingError(f"guide site {name!r} is not reparameterized (its distribution has no "
                                       "rsample, or infer={'reparameterize': False}); its score-function term "
                                       "needs the ELBO's value, which a traced graph cannot hold: train it "
                                       "without traced")
                particle = particle - entropy.sum()
            surrogate = surrogate - particle / elbo.num_particles
        return surrogate


def _is_zero(x):
    return isinstance(x, numbers.Number) and x == 0


def _signature(value):
    """What a graph is specialized to: a tensor's shape, dtype, device and grad flag; the
    value of anything else (``num_data``, flags), containers element by element."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in sorted(value.items())))
    return ("value", type(value).__name__, value)


class TracedELBO:
    """``Trace_ELBO``'s loss and gradients for ``model``/``guide``, traced once per call
    signature and replayed as one compiled graph (see :mod:`pyro_vae.train.traced`).

    :param torch.nn.Module module: the module whose parameters (those with
        ``requires_grad``) and buffers ``model`` and ``guide`` use, e.g. a
        :class:`~pyro_vae.models.VAE`.
    :param model: a Pyro model, e.g. ``vae.model``; its structure may depend on the shapes
        and non-tensor values of its arguments, not on the data's values.
    :param guide: its guide, fully reparameterized.
    :param elbo: a :class:`pyro.infer.Trace_ELBO` (default ``Trace_ELBO()``); its
        ``num_particles`` and ``vectorize_particles`` are traced as they are.
    :param float loss_scale: the loss is multiplied by this before differentiation
        (e.g. 1/N for a per-data-point loss).
    :param bool compile: compile each graph with inductor (``torch.compile``,
        ``fallback_random``); False replays the traced aten graph as it is.

    ``traced(*args, **kwargs)`` returns ``(loss, grads)``: the 0-d loss tensor (times
    ``loss_scale``) and one gradient per parameter of :attr:`params`, None for a parameter
    the loss does not depend on (as ``.grad`` stays None in eager Pyro).
    """

    def __init__(self, module, model, guide, elbo=None, loss_scale=1.0, compile=True):
        elbo = Trace_ELBO() if elbo is None else elbo
        if type(elbo) is not Trace_ELBO:
            raise TracingError(f"traced steps reproduce Trace_ELBO (objective 'elbo'), not "
                               f"{type(elbo).__name__}; train it without traced")
        if not math.isfinite(loss_scale):
            raise ValueError(f"loss_scale must be a finite number, got {loss_scale}")
        self._surrogate = _Surrogate(module, model, guide, elbo)
        self.loss_scale, self.compile = float(loss_scale), bool(compile)
        #: the parameters differentiated, in the order of the returned gradients
        self.params = {k: p for k, p in self._surrogate.named_parameters() if p.requires_grad}
        #: one entry per traced signature: ``(graph, indices of the parameters with a gradient)``
        self.graphs = {}

    def _buffers(self):
        return {k: b for k, b in self._surrogate.named_buffers()}

    def trace(self, *args, **kwargs):
        """Trace (if not yet traced) the graph of this call signature; returns it.

        :raises TracingError: if the program cannot be traced, naming why.
        """
        from torch.fx.experimental.proxy_tensor import make_fx

        key = _signature((args, kwargs))
        if key in self.graphs:
            return self.graphs[key]
        names = list(self.params)
        used = []

        def loss_and_grads(params, buffers, args, kwargs):
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
            with pyro.get_param_store().scope(), pyro.validation_enabled(False):
                loss = functional_call(self._surrogate, {**params, **buffers}, (args, kwargs)) * self.loss_scale
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            used[:] = [i for i, g in enumerate(grads) if g is not None]
            return loss.detach(), [grads[i] for i in used]

        params = {k: p.detach() for k, p in self.params.items()}
        try:
            graph = make_fx(loss_and_grads, tracing_mode="fake", _allow_non_fake_inputs=True)(
                params, self._buffers(), args, kwargs)
        except TracingError:
            raise
        except Exception as e:  # data-dependent Python: .item(), bool of a tensor, data-dependent shapes
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TracingError(f"the model/guide pair cannot be traced into one graph ({type(e).__name__}: "
                               f"{first[:200]}); its Python may depend on the data's values; train it without "
                               "traced") from None
        if self.compile:
            graph = torch.compile(graph, options={"fallback_random": True}, fullgraph=True, dynamic=False)
        self.graphs[key] = (graph, [names[i] for i in used])
        return self.graphs[key]

    def __call__(self, *args, **kwargs):
        graph, names = self.trace(*args, **kwargs)
        params = {k: p.detach() for k, p in self.params.items()}
        with torch.no_grad():
            loss, grads = graph(params, self._buffers(), args, kwargs)
        by_name = dict(zip(names, grads))
        return loss, [by_name.get(k) for k in self.params]
