"""Every private torch and Pyro name the package reads, in one place.

The compiled (traced) path rests on names that neither torch nor Pyro promise to keep:

- ``torch._inductor.compile``: inductor on an aten graph captured without dynamo;
- ``make_fx(..., _allow_non_fake_inputs=True)``: tracing with real parameters beside fake data;
- ``torch.ops.mkldnn._linear_pointwise``: oneDNN's float32 matrix product;
- ``torch.utils._pytree``: flattening a graph's nested inputs;
- ``torch.fx.Graph._codegen``: the pytree calling convention a copied ``make_fx`` graph keeps;
- ``ELBO._get_traces`` and ``ELBO._guess_max_plate_nesting``: Pyro's own tracing of a model/guide pair;
- ``AutoGuide._setup_prototype``: building an autoguide before its first call;
- ``pyro.poutine.runtime._PYRO_STACK``: the active Pyro handlers;
- ``torch.distributions.Distribution._validate_args``: torch's default for argument checks.

They were tested with the versions in :data:`TESTED` (torch ≥ 2.14, < 2.15; Pyro ≥ 1.9,
< 1.10). :func:`check_compiled` refuses the compiled path in one line outside them; the
eager path uses none of these names except ``_validate_args`` (read and restored as is).
"""

import re

import pyro
import torch

#: package → (lowest tested version, first version not tested), as (major, minor)
TESTED = {"torch": ((2, 14), (2, 15)), "pyro-ppl": ((1, 9), (1, 10))}


class UnsupportedVersionError(RuntimeError):
    """The installed torch or Pyro lies outside the versions the compiled path was tested with."""


def _version(text):
    """(major, minor) of a version string such as ``"2.14.1+cpu"``."""
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def installed():
    """``{"torch": version, "pyro-ppl": version}`` of this environment, as strings."""
    return {"torch": torch.__version__, "pyro-ppl": pyro.__version__}


def compiled_supported():
    """Whether the installed torch and Pyro lie within :data:`TESTED`."""
    return all(lo <= _version(installed()[k]) < hi for k, (lo, hi) in TESTED.items())


def check_compiled():
    """Raise :class:`UnsupportedVersionError` (one line) where the compiled path was not tested."""
    for k, (lo, hi) in TESTED.items():
        v = installed()[k]
        if not lo <= _version(v) < hi:
            raise UnsupportedVersionError(
                f"the compiled (traced) path is tested with {k} >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}, and {v} is "
                "installed; run without traced (the eager path supports it)"
            )


# ---- torch ---------------------------------------------------------------------------------
def pytree():
    """``torch.utils._pytree``."""
    import torch.utils._pytree as pytree

    return pytree


def make_fx_fake(fn):
    """``make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)


def inductor_compile(graph, inputs, options):
    """``torch._inductor.compile(graph, inputs, options=options)``."""
    import torch._inductor  # about a second to import: only when a graph is compiled

    return torch._inductor.compile(graph, inputs, options=options)


def copy_graph_module(graph):
    """A copy of a ``make_fx`` graph module (nodes, their metadata, and ``Graph._codegen``,
    which takes and returns the nested inputs and outputs), to rewrite apart from it."""
    new = torch.fx.Graph()
    new._codegen = graph.graph._codegen
    new.output(new.graph_copy(graph.graph, {}))
    return torch.fx.GraphModule(graph, new)


def has_linear_pointwise():
    """Whether ``torch.ops.mkldnn._linear_pointwise`` exists in this build."""
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear_pointwise(a, weight, bias):
    """``torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")``: a @ weightᵀ (+ bias)."""
    return torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")


def default_validate_args():
    """``torch.distributions.Distribution._validate_args``, torch's default for argument checks."""
    return torch.distributions.Distribution._validate_args


# ---- Pyro ----------------------------------------------------------------------------------
def get_traces(elbo, model, guide, args, kwargs):
    """``elbo._get_traces(model, guide, args, kwargs)``: (model trace, guide trace) per particle."""
    return elbo._get_traces(model, guide, args, kwargs)


def guess_max_plate_nesting(elbo, model, guide, args, kwargs):
    """``elbo._guess_max_plate_nesting(model, guide, args, kwargs)``."""
    return elbo._guess_max_plate_nesting(model, guide, args, kwargs)


def setup_prototype(guide, *args, **kwargs):
    """``guide._setup_prototype(*args, **kwargs)`` of an autoguide, what its first call does."""
    return guide._setup_prototype(*args, **kwargs)


def pyro_stack():
    """``pyro.poutine.runtime._PYRO_STACK``: the active handlers."""
    from pyro.poutine.runtime import _PYRO_STACK

    return _PYRO_STACK
