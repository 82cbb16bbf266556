"""Trace once, replay: a function of Pyro programs as one aten graph, compiled.

The function runs under ``make_fx`` with fake tensors, with the parameters and buffers
of the modules it reads swapped in by ``torch.func.functional_call``. The result is one
aten graph from (parameters, buffers, arguments) to the outputs, which inductor compiles
directly (no dynamo: the graph is already aten). Later calls with the same signature
replay it; Pyro's Python does not run again. The spirit is ``pyro/ops/jit.py``'s
(``torch.jit.trace`` there).

What the program decided at trace time is part of the graph: the plates' sizes, the
scale N/B, the sites and their distributions, whether a site is observed. A graph is
traced again for each new *signature* (:func:`signature`, :func:`module_state`): the
shapes, strides, dtypes and devices of the tensor arguments, the values of every other
argument (``num_data=N`` included), each submodule's train/eval mode, each parameter's
``requires_grad`` and the layout of every parameter and buffer. A call inside Pyro
handlers (``poutine.scale`` around it) is refused (:func:`check_no_handlers`): apply them
inside the model and guide. The one handler let through is Pyro's parameter capture
(``poutine.trace(param_only=True)``, what :class:`pyro.infer.SVI` wraps a step in).

Values of the data are never seen while tracing (fake tensors), so a program whose
Python decides on them (``float(x.sum())``, ``if x.sum() > 0``, ``.numpy()``) cannot be
traced and is refused with :class:`TracingError`. Everything else the program reads from
Python is baked in as it is at trace time: tensors that a module holds as plain
attributes, neither parameters nor buffers (a flow's fixed permutation), and plain
numbers held as attributes or globals: pass a value that changes as an argument, whose
value is part of the signature.

Random draws: the graph calls the same aten random ops in the same order as the eager
program, and inductor is asked to keep them as calls into torch's global generator
(``fallback_random``), so a replay consumes the generator as the eager call does.

Which kernels a graph's products run on, and whether :func:`~.graph_passes.log1p_free`
rewrites it, is measured on this machine when the graph is built (:mod:`.kernels`).
"""

import contextlib
import traceback
from pathlib import Path

import pyro
import torch
from pyro.poutine.trace_messenger import TraceMessenger
from torch.func import functional_call

from .. import _compat
from . import kernels
from .graph_passes import log1p_free, onednn_available, onednn_matmuls


class TracingError(ValueError):
    """The model/guide pair cannot be traced into one graph (see :mod:`pyro_vae.ops.compile`)."""


def signature(value):
    """What a graph is specialized to: a tensor's shape, strides, dtype, device and grad
    flag; the value of anything else (``num_data``, flags), containers element by element."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, signature(v)) for k, v in sorted(value.items())))
    try:
        hash(value)
    except TypeError:
        raise TracingError(
            f"an argument of type {type(value).__name__} is neither a tensor nor hashable: a traced "
            "graph is specialized to the values of its other arguments; pass it as a tensor"
        ) from None
    return ("value", type(value).__name__, value)


_DATA_DEPENDENT = ("DataDependentOutputException", "GuardOnDataDependentSymNode", "DynamicOutputShapeException")


def trace_graph(fn, inputs, compile=True, onednn=None, rewrite=None, kept=None):
    """``make_fx`` of ``fn(*inputs)`` on fake tensors, then rewritten and compiled:

    - its float32 CPU matrix products moved to oneDNN (:func:`onednn_matmuls`) if
      ``onednn``; None: if :func:`~pyro_vae.ops.kernels.choose_matmul` times oneDNN
      faster for the graph's product shapes on this machine;
    - its softplus and Bernoulli log-densities rewritten by :func:`log1p_free` if
      ``rewrite``; None: if :func:`~pyro_vae.ops.kernels.choose_rewrite` times the
      rewritten graph faster than the plain one, both run on ``inputs`` inside ``kept()``;
    - compiled by inductor if ``compile`` (random ops left as calls into torch's generator).

    :param kept: a context manager factory under which a timing run of the graph leaves
        no trace (random generators forked, buffers restored); needed for ``rewrite=None``.
    :raises TracingError: if ``fn``'s Python depends on the data's values.
    """
    _compat.check_compiled()
    try:
        graph = _compat.make_fx_fake(fn)(*inputs)
    except TracingError:
        raise
    except Exception as e:  # data-dependent Python: .item(), bool of a tensor, data-dependent shapes
        if type(e).__name__ not in _DATA_DEPENDENT and "not supported for tensor subclasses" not in str(e):
            raise  # a bug of the program itself: its own error, unchanged (.numpy() is a read of values)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TracingError(
            f"the model/guide pair cannot be traced into one graph ({type(e).__name__}: "
            f"{first[:200]}{_where(e)}); its Python may depend on the data's values; run it "
            "without traced"
        ) from None
    if onednn is None:
        onednn = kernels.choose_matmul(kernels.product_shapes(graph)) == "onednn"
    if onednn:
        onednn_matmuls(graph)  # first: it reads the shapes make_fx recorded on each node
    if rewrite is False:
        return _inductor(graph, inputs) if compile else graph
    rewritten = _compat.copy_graph_module(graph)
    if not log1p_free(rewritten):  # nothing to rewrite
        return _inductor(graph, inputs) if compile else graph
    if rewrite:
        return _inductor(rewritten, inputs) if compile else rewritten
    if kept is None:
        raise ValueError("rewrite=None times the graph both ways and needs kept, the context of a timing run")
    key = (graph.code, tuple(signature(v) for v in _compat.pytree().tree_leaves(inputs)), bool(compile))
    built = {}

    def runner(g):
        """Build (compile) variant ``g`` and return one timing run of it: called only if
        the choice is not cached."""
        built[id(g)] = _inductor(g, inputs) if compile else g

        def run():
            with kept():
                built[id(g)](*inputs)

        return run

    chosen = rewritten if kernels.choose_rewrite(key, lambda: runner(graph), lambda: runner(rewritten)) else graph
    if id(chosen) in built:
        return built[id(chosen)]
    return _inductor(chosen, inputs) if compile else chosen


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
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if torch_dir not in Path(f.filename).parents and not _ours(f.filename)
    ]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(f.filename).name}:{f.lineno}: {(f.line or '').strip()[:80]}"


def _ours(filename):
    """Whether ``filename`` is of the tracing machinery (this package, the compiled ELBO)."""
    here = Path(__file__).parent
    path = Path(filename)
    return here in path.parents or path == here.parent / "objectives" / "compiled.py"


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
    the same tracing rules and refusals as :class:`~pyro_vae.objectives.CompiledTrace_ELBO`. The first call of each
    signature runs ``fn`` eagerly (with Pyro's checks when validation is on) and returns
    its value; the graph is traced after it and replayed from the next call on, drawing
    from torch's generator as the eager calls would.

    :param modules: the :class:`torch.nn.Module` (or list of them) whose parameters and
        buffers ``fn`` reads.
    :param fn: the function; its structure may depend on the shapes and non-tensor values
        of its arguments, not on the data's values.
    :param bool compile: compile each graph with inductor; False replays it as traced.
    :param bool onednn: compute float32 CPU matrix products with oneDNN
        (:func:`onednn_matmuls`); None (default): where it is timed faster on this machine.
    :param bool rewrite: apply :func:`log1p_free`; None (default): where it is timed faster.
    """

    def __init__(self, modules, fn, compile=True, onednn=None, rewrite=None):
        modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
        self._call, self.compile, self.graphs = _Call(modules, fn), bool(compile), {}
        self.onednn = None if onednn is None else bool(onednn)
        self.rewrite = None if rewrite is None else bool(rewrite)

    def _state(self):
        return {**{k: p.detach() for k, p in self._call.named_parameters()}, **dict(self._call.named_buffers())}

    def __call__(self, *args, **kwargs):
        kwargs, onednn, key = prepare(self._call, self.onednn, args, kwargs)
        if key in self.graphs:
            with torch.no_grad():
                return self.graphs[key](self._state(), args, kwargs)
        # the first call of a signature runs eagerly, as it would without tracing (Pyro's
        # checks when on, the program's own errors, the draws, modules that build their
        # parameters on a first call); the graph traced after it serves the next calls
        with torch.no_grad():
            value = self._call(args, kwargs)
        kwargs, onednn, key = prepare(self._call, self.onednn, args, kwargs)

        def run(state, args, kwargs):
            with torch.no_grad(), pyro.validation_enabled(False):
                return functional_call(self._call, state, (args, kwargs))

        self.graphs[key] = trace_graph(
            run,
            (self._state(), args, kwargs),
            self.compile,
            onednn,
            self.rewrite,
            kept=lambda: side_effects_kept(self._call, args),
        )
        return value


def setup_autoguides(module, args, kwargs):
    """Build every autoguide among ``module``'s submodules that has not met the model yet
    (``AutoGuide._setup_prototype``, what its first call does), on the real generator, as
    the first eager step would: its initial draws are then those of eager Pyro."""
    from pyro.infer.autoguide import AutoGuide

    for m in module.modules():
        if isinstance(m, AutoGuide) and getattr(m, "prototype_trace", True) is None:
            with pyro.get_param_store().scope(), pyro.validation_enabled(False):
                _compat.setup_prototype(m, *args, **kwargs)


@contextlib.contextmanager
def buffers_kept(module):
    """The module's buffers (batch-norm statistics, counters) restored after the block: an
    eager run that only checks the program leaves no trace in them."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def forked_rng(args):
    """``torch.random.fork_rng`` over the CPU generator and the GPU of the first CUDA tensor in ``args``."""
    devices = [a.device for a in args if torch.is_tensor(a) and a.is_cuda][:1]
    return torch.random.fork_rng(devices=devices)


@contextlib.contextmanager
def side_effects_kept(module, args):
    """Within: a run of ``module``'s program that leaves no trace: random generators
    forked (:func:`forked_rng`), buffers restored (:func:`buffers_kept`), no gradients."""
    with forked_rng(args), torch.no_grad(), buffers_kept(module):
        yield


def prepare(module, onednn, args, kwargs):
    """For a call of a traced program: Pyro handlers refused, the keyword arguments sorted
    (a graph takes its inputs in the order traced), the products' kernel (False where
    oneDNN is not available, None: to be measured), and the key of its graph."""
    check_no_handlers()
    kwargs = dict(sorted(kwargs.items()))
    onednn = False if not onednn_available() else onednn
    return kwargs, onednn, (signature((args, kwargs)), module_state(module), onednn)


def module_state(module):
    """What a graph is specialized to besides its arguments: each submodule's train/eval
    mode (dropout, batch norm), each parameter's ``requires_grad``, and the signature of
    every parameter and buffer (shapes, strides, dtypes, devices)."""
    params = tuple(module.parameters())
    return (
        tuple(m.training for m in module.modules()),
        tuple(p.requires_grad for p in params),
        tuple((t.shape, t.stride(), t.dtype, t.device) for t in (*params, *module.buffers())),
    )


def check_no_handlers():
    """Refuse a call inside Pyro handlers (``poutine.scale``, ``mask``, ...): they would be
    baked into the graph of the first call and not seen by later ones. Pyro's parameter
    capture (``poutine.trace(param_only=True)``, inside :meth:`pyro.infer.SVI.step`) is let
    through: the compiled ELBO reports its parameters to it."""
    stack = _compat.pyro_stack()
    others = [h for h in stack if not (isinstance(h, TraceMessenger) and h.param_only)]
    if others:
        names = ", ".join(type(h).__name__ for h in others)
        raise TracingError(
            f"a traced program is called inside Pyro handlers ({names}), which a replayed graph "
            "would not see; apply them inside the model and guide instead"
        )
