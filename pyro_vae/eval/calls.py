r"""The call forms of the evaluation functions, resolved in one place.

Every function of :mod:`pyro_vae.eval` takes a Pyro model and guide the way
:class:`pyro.infer.Importance` does,

    f(model, guide, x, *args, ...)      model(x, *args), guide(x, *args): Pyro callables,

(functions, bound methods such as ``vae.model``, autoguides; the guide passed is the guide
used), and one convenience for the package's own models: an object with callable ``.model``
and ``.guide`` attributes (a :class:`~pyro_vae.models.VAE`, a
:class:`~pyro_vae.amortized.ModelGuide`) stands for its pair,

    f(vae, x, *args, ...)  =  f(vae.model, vae.guide, x, *args, ...),

and brings its device, eval mode and ``likelihood.check(x)``. Functions that need only the
model (NUTS, log p(x, z)) take ``f(model, x, ...)`` or ``f(vae, x, ...)``.

:func:`model_and_guide` resolves the forms into a :class:`ModelAndGuide`, which checks and
moves the data (:meth:`ModelAndGuide.prepare`) and evaluates the pair as fixed densities
(:meth:`ModelAndGuide.evaluating`); :func:`split_args` and :func:`batch_args` split the
positional arguments after the pair into x and the model's own, whole or per batch.
"""

from contextlib import ExitStack, contextmanager, nullcontext

import pyro
import torch
from pyro.poutine.util import is_validation_enabled
from torch import nn


def _model_device(model):
    if isinstance(model, torch.nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device
    return torch.device("cpu")


def _is_model_object(obj):
    """A VAE-like object: anything with callable ``.model`` and ``.guide`` attributes."""
    return callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None))


def _owner_module(fn):
    """The :class:`torch.nn.Module` behind a Pyro callable: the module itself (an autoguide,
    a ``PyroModule``), or the object of a bound method (``vae.model``); else None."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class ModelAndGuide:
    """A Pyro model and guide to evaluate, as :func:`model_and_guide` resolved them.

    :ivar model: the model callable, ``model(x, *args)``.
    :ivar guide: the guide callable, ``guide(x, *args)`` (None where only a model is needed).
    :ivar source: the VAE-like object they came from, or None for plain callables.
    """

    def __init__(self, model, guide=None, source=None):
        self.model, self.guide, self.source = model, guide, source
        owners = [source] if isinstance(source, nn.Module) else []
        owners += [m for m in map(_owner_module, (model, guide)) if m is not None]
        self.modules = []  # the modules whose train/eval mode and parameters evaluation touches
        for m in owners:
            if not any(_contains(s, m) for s in self.modules):
                self.modules.append(m)

    def prepare(self, x, args):
        """Check a batch ``x`` ``(N, x_dim)`` and the model arguments after it; return them on
        the evaluation device: the object's device (after its ``likelihood.check(x)``, and,
        with Pyro's validation on, its ``condition`` of the whole of c) when a VAE-like object
        was given, else x's own device (args are moved to it)."""
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a tensor of shape (N, x_dim), got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must be a batch of data points of shape (N, x_dim), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            raise ValueError("x holds no data points (N = 0)")
        for i, a in enumerate(args):
            if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] != n:
                raise ValueError(f"model argument {i + 1} after x has {a.shape[0]} rows, but x has {n} data points")
        if self.source is not None:
            check = getattr(getattr(self.source, "likelihood", None), "check", None)
            if check is not None:
                check(x)
            condition = getattr(self.source, "condition", None)  # a conditional VAE's c, checked once
            if condition is not None and args and torch.is_tensor(args[0]) and is_validation_enabled():
                with torch.no_grad():
                    condition(args[0], x)
            device = _model_device(self.source)
        else:
            device = x.device
        return x.to(device), tuple(a.to(device) if torch.is_tensor(a) else a for a in args)

    @contextmanager
    def evaluating(self, grad=False, freeze=False):
        """Evaluate the pair as fixed densities: every module behind it (the VAE object, the
        module of a bound method, a guide module) in eval mode, without gradients unless
        ``grad`` (NUTS differentiates with respect to z), its parameters frozen if ``freeze``;
        all restored afterwards, submodule by submodule.

        A VAE object is evaluated in a private param store (its parameters are its own);
        plain callables in the current store, as :class:`pyro.infer.Importance` does, so a
        ``pyro.param`` that a user's model or guide reads has its trained value."""
        modes = [(m, m.training) for owner in self.modules for m in owner.modules()]
        flags = [(p, p.requires_grad) for owner in self.modules for p in owner.parameters()] if freeze else []
        try:
            for owner in self.modules:
                owner.eval()
            for p, _ in flags:
                p.requires_grad_(False)
            with ExitStack() as stack:
                stack.enter_context(pyro.get_param_store().scope() if self.source is not None else nullcontext())
                if not grad:
                    stack.enter_context(torch.no_grad())
                yield self
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, mode in modes:
                m.training = mode


def _contains(outer, inner):
    """Whether module ``inner`` is ``outer`` or one of its submodules."""
    return any(m is inner for m in outer.modules())


def model_and_guide(fn, model, rest, need_guide=True):
    r"""Resolve the two call forms of the evaluation functions (one place for all of them):

    - ``fn(model, guide, x, *args, ...)``: Pyro callables, taken as
      :class:`pyro.infer.Importance` takes them (functions, methods such as ``vae.model``,
      autoguides); the guide passed is the guide used;
    - ``fn(vae, x, *args, ...)``: an object with callable ``.model`` and ``.guide``
      attributes (a :class:`~pyro_vae.models.VAE`, a :class:`~pyro_vae.amortized.ModelGuide`)
      stands for ``(vae.model, vae.guide)``, and brings its device, eval mode and
      ``likelihood.check(x)``.

    With ``need_guide=False`` (NUTS, log p(x, z)) the forms are ``fn(model, x, ...)`` and
    ``fn(vae, x, ...)``.

    :param str fn: the public function's name, for errors.
    :param model: the first positional argument.
    :param tuple rest: the positional arguments after it.
    :returns: ``(pair, rest)``: a :class:`ModelAndGuide` and the arguments after the
        model (and guide), i.e. ``(x, *args)``.
    """
    if isinstance(model, ModelAndGuide):
        return model, tuple(rest)
    rest = tuple(rest)
    if _is_model_object(model):
        if need_guide and rest and callable(rest[0]) and not torch.is_tensor(rest[0]):
            raise TypeError(
                f"{fn}: got a {type(model).__name__} (which brings its own guide) and then another "
                f"guide; to evaluate with your guide pass the model callable: "
                f"{fn}({type(model).__name__.lower()}.model, guide, x, ...)"
            )
        return ModelAndGuide(model.model, model.guide if need_guide else None, source=model), rest
    if not callable(model) or torch.is_tensor(model):
        form = "(model, guide, x, ...)" if need_guide else "(model, x, ...)"
        raise TypeError(
            f"{fn}{form} takes a Pyro model callable, or an object with .model and .guide methods "
            f"such as a VAE, got {type(model).__name__}"
        )
    if not need_guide:
        return ModelAndGuide(model), rest
    if not rest or not callable(rest[0]) or torch.is_tensor(rest[0]):
        got = "nothing" if not rest else type(rest[0]).__name__
        raise TypeError(
            f"{fn}(model, guide, x, ...): the argument after the model must be the guide, a Pyro "
            f"callable, got {got}; to use a VAE's own guide pass the VAE: {fn}(vae, x, ...)"
        )
    return ModelAndGuide(model, rest[0]), rest[1:]


def split_args(fn, rest, names=("x",)):
    """The leading positional arguments ``names`` of ``rest`` (the data x, …), then the
    tuple of the model arguments after them: ``x, args = split_args(fn, rest)``."""
    rest = tuple(rest)
    if len(rest) < len(names):
        raise TypeError(
            f"{fn}: {' and then '.join(names)} {'is' if len(names) == 1 else 'are'} missing after "
            "the model (and guide); x is a tensor of shape (N, x_dim)"
        )
    return (*rest[: len(names)], rest[len(names) :])


def batch_args(args, n, start, stop):
    """The model arguments for data points ``start:stop`` of ``n``: tensors whose first
    dimension is n are sliced with x, the others passed whole."""
    return tuple(a[start:stop] if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == n else a for a in args)


def fixed_model(model, guide=None):
    """A context in which ``model`` (a VAE-like object, or a Pyro model callable and
    optionally its ``guide``) is evaluated as a fixed density p(x, z): the modules behind
    it in eval mode, their parameters without gradients (NUTS differentiates with respect
    to z only), a VAE object in a private param store; all restored afterwards
    (:meth:`ModelAndGuide.evaluating`)."""
    rest = () if guide is None else (guide,)
    pair, _ = model_and_guide("fixed_model", model, rest, need_guide=guide is not None)
    return pair.evaluating(grad=True, freeze=True)
