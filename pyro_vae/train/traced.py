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
inductor compiles directly (no dynamo: the graph is already aten). Later calls with the
same signature replay it; Pyro's Python does not run again.

What Pyro decided at trace time is part of the graph: the plates' sizes, the scale N/B,
the sites and their distributions, whether a site is observed. The graph is traced
again for each new *signature*: the shapes, strides, dtypes and devices of the tensor
arguments, the values of every other argument (``num_data=N`` included), each
submodule's train/eval mode, each parameter's ``requires_grad`` and the layout of every
parameter and buffer. A call inside Pyro handlers (``poutine.scale`` around it) is
refused: apply them inside the model and guide. An ELBO of vectorized particles without
``max_plate_nesting`` has it guessed eagerly before the first trace (Pyro's guess runs
the program once, drawing as the first eager call of that ELBO does).

Before each trace of :class:`TracedELBO` the program runs once eagerly, on forked random
generators, without gradients and with the buffers restored after it: its own errors are
raised as they are. Autoguides that have not met the model yet are built before it, on
the real generator, as their first eager call would build them. A parameter the program
reads that is not the module's (``pyro.param`` from the param store, a module not passed
in) is refused: the graph would hold it as a constant. Values of the data are never seen
while tracing (fake tensors), so a program whose Python decides on them (``float(x.sum())``,
``if x.sum() > 0``, ``.numpy()``) cannot be traced and is refused with
:class:`TracingError`, as is a guide site without ``rsample`` (its score-function term
would need the ELBO's value in the graph). Everything else the program reads from Python
is baked in as it is at trace time: tensors that a module holds as plain attributes,
neither parameters nor buffers (a flow's fixed permutation), and plain numbers held as
attributes or globals (a KL weight β read from ``self.beta``): pass a value that changes
as an argument, whose value is part of the signature.

Random draws: the graph calls the same aten random ops in the same order as eager Pyro,
and inductor is asked to keep them as calls into torch's global generator
(``fallback_random``), so a step consumes the generator as the eager step does and a run
resumed from its saved generator state continues the same stream. The compiled graph
fuses elementwise work, so values agree with eager ``Trace_ELBO`` to float rounding, not
bit for bit.
"""

import contextlib
import math
import numbers
import traceback
from pathlib import Path
from typing import Optional

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.func import functional_call

from .. import _compat


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
    """What a graph is specialized to: a tensor's shape, strides, dtype, device and grad
    flag; the value of anything else (``num_data``, flags), containers element by element."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in sorted(value.items())))
    try:
        hash(value)
    except TypeError:
        raise TracingError(f"an argument of type {type(value).__name__} is neither a tensor nor hashable: a traced "
                           "graph is specialized to the values of its other arguments; pass it as a tensor") from None
    return ("value", type(value).__name__, value)


_aten = torch.ops.aten


def log1p_free(graph):
    """Rewrite, in place, the aten graph's ``softplus`` and unweighted, unreduced
    ``binary_cross_entropy_with_logits`` nodes without ``log1p``:

        softplus(x; β, τ) = x                      if βx > τ,
                            L(e^{βx}) / β          otherwise;
        −log Bernoulli(y | logits x) = (1 − y) x − min(x, 0) + L(e^{−|x|}),

    PyTorch's own formulas with log1p(u) computed as L(u) = u if w = 1 else
    log(w) · u / (w − 1), w = 1 + u in floating point (Goldberg's rounding-corrected
    log(1 + u), within a few ulps of log1p(u) in relative terms, for tiny u too), while
    the vectorized ``log1p`` runs several times slower than ``log`` on CPUs. The backward
    nodes (already in the graph, ``softplus_backward`` and the sigmoid of the BCE
    gradient) are unchanged.

    :returns: the number of nodes rewritten.
    """
    g = graph.graph
    done = 0
    for node in list(g.nodes):
        if node.op != "call_function":
            continue
        if node.target is _aten.softplus.default:
            x = node.args[0]
            beta = node.args[1] if len(node.args) > 1 else node.kwargs.get("beta", 1)
            threshold = node.args[2] if len(node.args) > 2 else node.kwargs.get("threshold", 20)
            with g.inserting_before(node):
                bx = x if beta == 1 else g.call_function(_aten.mul.Scalar, (x, beta))
                soft = _log1p_exp(g, bx)
                if beta != 1:
                    soft = g.call_function(_aten.div.Scalar, (soft, beta))
                new = g.call_function(_aten.where.self, (g.call_function(_aten.gt.Scalar, (bx, threshold)), x, soft))
        elif node.target is _aten.binary_cross_entropy_with_logits.default:
            x, y = node.args[:2]
            weight, pos_weight, reduction = (node.args[i] if len(node.args) > i else node.kwargs.get(k, d)
                                             for i, k, d in ((2, "weight", None), (3, "pos_weight", None),
                                                             (4, "reduction", 1)))
            if weight is not None or pos_weight is not None or reduction != 0:
                continue
            with g.inserting_before(node):
                linear = g.call_function(_aten.sub.Tensor, (
                    g.call_function(_aten.mul.Tensor, (g.call_function(_aten.rsub.Scalar, (y, 1)), x)),
                    g.call_function(_aten.clamp_max.default, (x, 0))))
                minus_abs = g.call_function(_aten.neg.default, (g.call_function(_aten.abs.default, (x,)),))
                new = g.call_function(_aten.add.Tensor, (linear, _log1p_exp(g, minus_abs)))
        else:
            continue
        done += _replace(node, new)
    return _recompiled(graph, done)


def _replace(node, new):
    """Node ``new`` in place of ``node`` for all its users, ``node`` erased; returns 1."""
    node.replace_all_uses_with(new)
    node.graph.erase_node(node)
    return 1


def _recompiled(graph, done):
    """``graph`` checked and its code regenerated if ``done`` nodes were rewritten; returns ``done``."""
    if done:
        graph.graph.lint()
        graph.recompile()
    return done


def _log1p_exp(g, t):
    """Graph nodes for log1p(u), u = e^t, as ``where(w == 1, u, log(w) * (u / (w − 1)))``,
    w = 1 + u. Each use of u and w is a node of its own: inductor merges the copies
    within the kernel that reads them, where one node used thrice would be written to
    memory whole (on CPU it stores a reused exp rather than computing it again)."""
    def u():
        return g.call_function(_aten.exp.default, (t,))

    def w():
        return g.call_function(_aten.add.Scalar, (u(), 1))

    ratio = g.call_function(_aten.div.Tensor, (u(), g.call_function(_aten.sub.Scalar, (w(), 1))))
    corrected = g.call_function(_aten.mul.Tensor, (g.call_function(_aten.log.default, (w(),)), ratio))
    return g.call_function(_aten.where.self, (g.call_function(_aten.eq.Scalar, (w(), 1)), u(), corrected))


@torch.library.custom_op("pyro_vae::onednn_matmul", mutates_args=())
def onednn_matmul(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """a @ b (+ bias): the float32 matrix product (M, K) · (K, N) → (M, N), contiguous,
    computed by oneDNN (``torch.ops.mkldnn._linear_pointwise(a, bᵀ, bias)``, the kernel of
    ``torch.nn.Linear`` on mkldnn tensors) rather than by the BLAS behind ``torch.mm``.
    An opaque op to inductor, whose own lowering of the oneDNN product takes constant
    weights only."""
    bias = None if bias is None else bias.contiguous()  # the kernel reads the bias as contiguous
    return _compat.linear_pointwise(a, b.t(), bias)


@onednn_matmul.register_fake
def _(a, b, bias):
    return a.new_empty(a.shape[0], b.shape[1])


def onednn_available():
    """Whether this torch build has oneDNN for CPU matrix products, and it is not turned off
    (``torch.backends.mkldnn.flags(enabled=False)``)."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and _compat.has_linear_pointwise())


def onednn_matmuls(graph):
    """Rewrite, in place, the aten graph's float32 CPU ``mm(a, b)`` and ``addmm(bias, a, b)``
    (β = α = 1, bias of shape (N,)) nodes as :func:`onednn_matmul`: the same product
    Σ_k a_ik b_kj (+ bias_j) in float32, summed in another order (so equal to float32
    rounding, not bit for bit). oneDNN picks its kernels by the instructions the CPU
    has; the BLAS torch is built with (MKL) may not use AVX-512 on every x86 CPU, and
    where it does not, oneDNN runs these products about twice as fast (docs/speed.md).
    Other dtypes, devices and empty operands are left as they are.

    :returns: the number of nodes rewritten.
    """
    g = graph.graph
    done = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in (_aten.mm.default, _aten.addmm.default):
            continue
        out = node.meta.get("val")
        if out is None or out.device.type != "cpu" or out.dtype != torch.float32 or out.numel() == 0:
            continue
        if node.target is _aten.addmm.default:
            if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
                continue
            bias, a, b = node.args
            bias_val = bias.meta.get("val") if isinstance(bias, torch.fx.Node) else None
            if bias_val is None or tuple(bias_val.shape) != (out.shape[1],) or bias_val.dtype != torch.float32:
                continue
        else:
            (a, b), bias = node.args, None
        a_val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        if a_val is None or a_val.shape[1] == 0:
            continue  # K = 0: the product is zeros (or the bias), left to aten
        with g.inserting_before(node):
            new = g.call_function(torch.ops.pyro_vae.onednn_matmul.default, (a, b, bias))
        new.meta = dict(node.meta)
        done += _replace(node, new)
    return _recompiled(graph, done)


_DATA_DEPENDENT = ("DataDependentOutputException", "GuardOnDataDependentSymNode", "DynamicOutputShapeException")


def _trace(fn, inputs, compile, onednn):
    """``make_fx`` of ``fn(*inputs)`` on fake tensors, its CPU matrix products moved to
    oneDNN by :func:`onednn_matmuls` if ``onednn``, its softplus and Bernoulli
    log-densities rewritten by :func:`log1p_free`, compiled by inductor if ``compile``
    (random ops left as calls into torch's generator)."""
    _compat.check_compiled()
    try:
        graph = _compat.make_fx_fake(fn)(*inputs)
    except TracingError:
        raise
    except Exception as e:  # data-dependent Python: .item(), bool of a tensor, data-dependent shapes
        if type(e).__name__ not in _DATA_DEPENDENT and "not supported for tensor subclasses" not in str(e):
            raise  # a bug of the program itself: its own error, unchanged (.numpy() is a read of values)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TracingError(f"the model/guide pair cannot be traced into one graph ({type(e).__name__}: "
                           f"{first[:200]}{_where(e)}); its Python may depend on the data's values; run it "
                           "without traced") from None
    if onednn:
        onednn_matmuls(graph)  # first: it reads the shapes make_fx recorded on each node
    log1p_free(graph)
    if compile:
        graph = _inductor(graph, inputs)
    return graph


def _inductor(graph, inputs):
    """``graph`` (an aten graph from ``make_fx``) compiled by inductor directly
    (``torch._inductor.compile``, for graphs captured without dynamo), random ops left as
    calls into torch's generator (``fallback_random``). Dynamo would trace the graph's
    Python again and guard every call on its inputs; the graph needs neither. Inductor is
    shown the fake tensors ``make_fx`` traced with (each placeholder's ``meta["val"]``),
    whose shape environment lets it find a compiled graph in its cache."""
    pytree = _compat.pytree()
    leaves, spec = pytree.tree_flatten(inputs)
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    if len(placeholders) == len(leaves):
        leaves = [n.meta.get("val", leaf) if torch.is_tensor(leaf) else leaf for n, leaf in zip(placeholders, leaves)]
    return _compat.inductor_compile(graph, list(pytree.tree_unflatten(leaves, spec)), {"fallback_random": True})


def _where(error):
    """``" at file.py:line: code"``: the last frame of ``error``'s traceback outside torch
    (the line of the model, guide or package that read a value), or ``""``."""
    torch_dir = Path(torch.__file__).parent
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if torch_dir not in Path(f.filename).parents and Path(f.filename) != Path(__file__)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(f.filename).name}:{f.lineno}: {(f.line or '').strip()[:80]}"


class _Call(torch.nn.Module):
    """``forward(args, kwargs) = fn(*args, **kwargs)``, the modules ``fn`` reads held as
    submodules so that ``functional_call`` can swap in their parameters and buffers."""

    def __init__(self, modules, fn):
        super().__init__()
        self.owners = torch.nn.ModuleList(modules)
        # in a tuple, not registered: ``fn`` may itself be one of the modules, which
        # ``functional_call`` would then swap twice under two names and not restore
        self._fn = (fn,)

    def forward(self, args, kwargs):
        return self._fn[0](*args, **kwargs)


class TracedFunction:
    """``fn(*args, **kwargs)``, a function of tensors without gradients (e.g. the log
    importance weights of a model/guide pair), traced once per call signature with the
    parameters and buffers of ``modules`` as inputs of the graph, and replayed compiled;
    the same tracing rules and refusals as :class:`TracedELBO`. The first call of each
    signature runs ``fn`` eagerly (with Pyro's checks when validation is on) and returns
    its value; the graph is traced after it and replayed from the next call on, drawing
    from torch's generator as the eager calls would.

    :param modules: the :class:`torch.nn.Module` (or list of them) whose parameters and
        buffers ``fn`` reads.
    :param fn: the function; its structure may depend on the shapes and non-tensor values
        of its arguments, not on the data's values.
    :param bool compile: compile each graph with inductor; False replays it as traced.
    :param bool onednn: compute float32 CPU matrix products with oneDNN
        (:func:`onednn_matmuls`); default: where this torch build has it.
    """

    def __init__(self, modules, fn, compile=True, onednn=None):
        modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
        self._call, self.compile, self.graphs = _Call(modules, fn), bool(compile), {}
        self.onednn = onednn_available() if onednn is None else bool(onednn)

    def _state(self):
        return {**{k: p.detach() for k, p in self._call.named_parameters()}, **dict(self._call.named_buffers())}

    def __call__(self, *args, **kwargs):
        kwargs, onednn, key = _prepare(self._call, self.onednn, args, kwargs)
        if key in self.graphs:
            with torch.no_grad():
                return self.graphs[key](self._state(), args, kwargs)
        # the first call of a signature runs eagerly, as it would without tracing (Pyro's
        # checks when on, the program's own errors, the draws, modules that build their
        # parameters on a first call); the graph traced after it serves the next calls
        with torch.no_grad():
            value = self._call(args, kwargs)
        kwargs, onednn, key = _prepare(self._call, self.onednn, args, kwargs)

        def run(state, args, kwargs):
            with torch.no_grad(), pyro.validation_enabled(False):
                return functional_call(self._call, state, (args, kwargs))

        self.graphs[key] = _trace(run, (self._state(), args, kwargs), self.compile, onednn)
        return value


def _setup_autoguides(module, args, kwargs):
    """Build every autoguide among ``module``'s submodules that has not met the model yet
    (``AutoGuide._setup_prototype``, what its first call does), on the real generator, as
    the first eager step would: its initial draws are then those of eager Pyro."""
    from pyro.infer.autoguide import AutoGuide

    for m in module.modules():
        if isinstance(m, AutoGuide) and getattr(m, "prototype_trace", True) is None:
            with pyro.get_param_store().scope(), pyro.validation_enabled(False):
                _compat.setup_prototype(m, *args, **kwargs)


@contextlib.contextmanager
def _buffers_kept(module):
    """The module's buffers (batch-norm statistics, counters) restored after the block: an
    eager run that only checks the program leaves no trace in them."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _forked_rng(args):
    """``torch.random.fork_rng`` over the CPU generator and the GPU of the first CUDA tensor in ``args``."""
    devices = [a.device for a in args if torch.is_tensor(a) and a.is_cuda][:1]
    return torch.random.fork_rng(devices=devices)


def _prepare(module, onednn, args, kwargs):
    """For a call of a traced program: Pyro handlers refused, the keyword arguments sorted
    (a graph takes its inputs in the order traced), whether its products go to oneDNN,
    and the key of its graph."""
    _check_no_handlers()
    kwargs = dict(sorted(kwargs.items()))
    onednn = onednn and onednn_available()
    return kwargs, onednn, (_signature((args, kwargs)), _module_state(module), onednn)


def _module_state(module):
    """What a graph is specialized to besides its arguments: each submodule's train/eval
    mode (dropout, batch norm), each parameter's ``requires_grad``, and the signature of
    every parameter and buffer (shapes, strides, dtypes, devices)."""
    params = tuple(module.parameters())
    return (tuple(m.training for m in module.modules()), tuple(p.requires_grad for p in params),
            tuple((t.shape, t.stride(), t.dtype, t.device) for t in (*params, *module.buffers())))


def _check_no_handlers():
    """Refuse a call inside Pyro handlers (``poutine.scale``, ``mask``, ...): they would be
    baked into the graph of the first call and not seen by later ones."""
    _PYRO_STACK = _compat.pyro_stack()
    if _PYRO_STACK:
        names = ", ".join(type(h).__name__ for h in _PYRO_STACK)
        raise TracingError(f"a traced program is called inside Pyro handlers ({names}), which a replayed graph "
                           "would not see; apply them inside the model and guide instead")


class TracedELBO:
    """``Trace_ELBO``'s loss and gradients for ``model``/``guide``, traced once per call
    signature and replayed as one compiled graph (see :mod:`pyro_vae.train.traced`).

    :param torch.nn.Module module: the module whose parameters and buffers ``model`` and
        ``guide`` use, e.g. a :class:`~pyro_vae.models.VAE`; those parameters with
        ``requires_grad`` are differentiated.
    :param model: a Pyro model, e.g. ``vae.model``; its structure may depend on the shapes
        and non-tensor values of its arguments, not on the data's values.
    :param guide: its guide, fully reparameterized.
    :param elbo: a :class:`pyro.infer.Trace_ELBO` (default ``Trace_ELBO()``); its
        ``num_particles`` and ``vectorize_particles`` are traced as they are.
    :param float loss_scale: the loss is multiplied by this before differentiation
        (e.g. 1/N for a per-data-point loss).
    :param bool compile: compile each graph with inductor (``torch._inductor.compile``,
        ``fallback_random``); False replays the traced aten graph as it is.
    :param bool onednn: compute float32 CPU matrix products with oneDNN
        (:func:`onednn_matmuls`); default: where this torch build has it.

    ``traced(*args, **kwargs)`` returns ``(loss, grads)``: the 0-d loss tensor (times
    ``loss_scale``) and one gradient per parameter of :attr:`params`, None for a parameter
    the loss does not depend on (as ``.grad`` stays None in eager Pyro).
    """

    def __init__(self, module, model, guide, elbo=None, loss_scale=1.0, compile=True, onednn=None):
        elbo = Trace_ELBO() if elbo is None else elbo
        if type(elbo) is not Trace_ELBO:
            raise TracingError(f"traced steps reproduce Trace_ELBO (objective 'elbo'), not "
                               f"{type(elbo).__name__}; train it without traced")
        if not math.isfinite(loss_scale):
            raise ValueError(f"loss_scale must be a finite number, got {loss_scale}")
        self._surrogate = _Surrogate(module, model, guide, elbo)
        self.loss_scale, self.compile = float(loss_scale), bool(compile)
        self.onednn = onednn_available() if onednn is None else bool(onednn)
        #: one entry per traced signature: ``(graph, names of the parameters it differentiates)``
        self.graphs = {}

    @property
    def params(self):
        """The module's parameters now, by name, in the order of the returned gradients
        (None for those without ``requires_grad`` when traced)."""
        return dict(self._surrogate.named_parameters())

    def _buffers(self):
        return {k: b for k, b in self._surrogate.named_buffers()}

    def _check_parameters(self, args, kwargs):
        """Run the program once eagerly (forked generators, no gradients, a scoped param
        store), building any parameters a module makes on its first call, and refuse one
        that reads a parameter which is not the module's (``pyro.param`` from the param
        store, a module not passed in): the graph would hold it as a constant."""
        model, guide, elbo = self._surrogate._program
        _setup_autoguides(self._surrogate, args, kwargs)
        with _forked_rng(args), torch.no_grad(), _buffers_kept(self._surrogate), pyro.get_param_store().scope(), \
                pyro.validation_enabled(False), poutine.trace(param_only=True) as capture:
            for _ in _compat.get_traces(elbo, model, guide, args, kwargs):
                pass
        own = {id(t) for t in (*self._surrogate.parameters(), *self._surrogate.buffers())}  # those built too
        foreign = []
        for name, site in capture.trace.nodes.items():
            value = site["value"]
            if id(value.unconstrained() if hasattr(value, "unconstrained") else value) not in own:
                foreign.append(name)
        if foreign:
            raise TracingError(f"the program reads parameters that are not the traced module's "
                               f"({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}): a traced graph would "
                               "hold them as constants, untrained; make them parameters of the module (a "
                               "PyroModule, or nn.Parameter), or run without traced")

    def trace(self, *args, **kwargs):
        """Trace (if not yet traced) the graph of this call signature; returns it.

        :raises TracingError: if the program cannot be traced, naming why.
        """
        kwargs, onednn, key = _prepare(self._surrogate, self.onednn, args, kwargs)
        if key in self.graphs:
            return self.graphs[key]
        model, guide, elbo = self._surrogate._program
        if elbo.vectorize_particles and elbo.max_plate_nesting == float("inf"):
            # Pyro's guess (``_get_traces`` of vectorized particles) runs the program once:
            # eagerly here, drawing from the generator as the first eager call of the ELBO
            # does; the graph is then free of it
            with torch.no_grad(), pyro.get_param_store().scope(), pyro.validation_enabled(False):
                _compat.guess_max_plate_nesting(elbo, model, guide, args, kwargs)
        self._check_parameters(args, kwargs)
        kwargs, onednn, key = _prepare(self._surrogate, self.onednn, args, kwargs)  # parameters may be new
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
            graph = _trace(loss_and_grads, (params, self._buffers(), args, kwargs), self.compile, onednn)
        self.graphs[key] = (graph, list(used))
        return self.graphs[key]

    def __call__(self, *args, **kwargs):
        graph, names = self.trace(*args, **kwargs)  # the module's modes and flags are part of its key
        kwargs = dict(sorted(kwargs.items()))
        params = {k: p.detach() for k, p in self.params.items()}
        with torch.no_grad():
            loss, grads = graph(params, self._buffers(), args, kwargs)
        by_name = dict(zip(names, grads))
        return loss, [by_name.get(k) for k in params]
