"""What the Trainer, the run folders and the CLI need of a model, stated as ``typing.Protocol``\\ s.

Required (:class:`PyroVAE`): a ``torch.nn.Module`` with Pyro ``model(x, *args, **kwargs)`` and
``guide(x, *args, **kwargs)`` callables over the same arguments, every batch dimension in a
``pyro.plate``. Everything else is optional, one Protocol per capability:

- :class:`TakesNumData`: ``model`` and ``guide`` take ``num_data=N`` and scale their data plate
  by N/B themselves (otherwise every site is scaled by N/B);
- :class:`LazyGuide`: ``guide.setup(x, ...)`` builds the guide's parameters from a first batch
  (an autoguide), before an optimizer is made over ``parameters()``;
- :class:`ChecksParameters`: ``check_parameters(x, ...)`` raises if model or guide register a
  parameter that ``parameters()`` does not hold;
- :class:`Configured`: ``config``, the builder's settings as a dict (``image_shape`` among them),
  which run.json stores and resume rebuilds from;
- :class:`SupportCheck`: ``likelihood.check(x)`` raises on data outside the likelihood's support;
- :class:`HasBaseline`: ``q.baseline``, a decaying-average baseline of the score-function
  estimator, which keeps one average per batch position (so every batch has one size);
- :class:`Conditional`: ``prepare_data(data)`` returns the data with the condition c in ``y``,
  and ``model``/``guide`` take ``(x, c)``; :class:`ClassConditional` when ``condition.num_classes``
  names the classes; :class:`Classifies`: ``classify(x)`` returns labels.

:func:`contract` checks a model against these once and returns a :class:`Contract`, which
the caller keeps in place of asking the model again.
"""

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class PyroVAE(Protocol):
    """A module with a Pyro model and guide over the same arguments."""

    def model(self, x, *args, **kwargs): ...

    def guide(self, x, *args, **kwargs): ...

    def parameters(self, recurse=True): ...

    def to(self, *args, **kwargs): ...

    def state_dict(self, *args, **kwargs): ...


@runtime_checkable
class LazyGuide(Protocol):
    """A guide that makes its parameters from a first batch: ``setup(*args, **kwargs)``."""

    def setup(self, *args, **kwargs): ...


@runtime_checkable
class ChecksParameters(Protocol):
    """``check_parameters(*args, **kwargs)``: raise if a parameter is not among ``parameters()``."""

    def check_parameters(self, *args, **kwargs): ...


@runtime_checkable
class Configured(Protocol):
    """``config``: the builder's settings (a dict with ``image_shape``)."""

    config: dict


@runtime_checkable
class SupportCheck(Protocol):
    """``check(x)``: raise a ValueError naming values outside the support."""

    def check(self, x): ...


@runtime_checkable
class HasDecoder(Protocol):
    """``decoder`` with ``x_dim``, the number of values per data point."""

    decoder: object


@runtime_checkable
class HasLikelihood(Protocol):
    likelihood: object


@runtime_checkable
class HasGuideNetwork(Protocol):
    q: object


@runtime_checkable
class HasBaseline(Protocol):
    """``baseline``: None, ``"decaying"`` or ``"neural"``."""

    baseline: str | None


@runtime_checkable
class Conditional(Protocol):
    """``prepare_data(data)``: the data with the condition c in ``data.y``; model and guide take ``(x, c)``."""

    def prepare_data(self, data): ...


@runtime_checkable
class ClassConditional(Conditional, Protocol):
    """A conditional model whose condition is a class label: ``condition.num_classes``."""

    condition: object


@runtime_checkable
class Classifies(Protocol):
    """``classify(x)``: a label per data point."""

    def classify(self, x): ...


def takes_num_data(fn):
    """Whether ``fn`` takes a ``num_data`` keyword (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_data" or p.kind is p.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class Contract:
    """What one model offers of the optional capabilities (see the module's docstring).

    :param setup: ``guide.setup`` or None.
    :param check_parameters: the model's ``check_parameters`` or None.
    :param dict config: the builder's settings, or None.
    :param tuple image_shape: ``config["image_shape"]`` or None.
    :param int x_dim: values per data point (from ``image_shape``, else ``decoder.x_dim``), or None.
    :param check_support: ``likelihood.check`` or None.
    :param bool takes_num_data: model and guide both take ``num_data``.
    :param bool fixed_batch_size: a decaying-average baseline needs every batch of one size.
    :param bool conditional: model and guide take ``(x, c)``; ``prepare_data`` gives c.
    :param int num_classes: K of a class-conditional model, else None.
    :param bool classifies: the model has ``classify(x)``.
    """

    setup: Callable | None
    check_parameters: Callable | None
    config: dict | None
    image_shape: tuple | None
    x_dim: int | None
    check_support: Callable | None
    takes_num_data: bool
    fixed_batch_size: bool
    conditional: bool
    num_classes: int | None
    classifies: bool


def contract(vae):
    """Check ``vae`` against :class:`PyroVAE` and find its optional capabilities, once.

    :raises TypeError: naming what is missing, when ``vae`` has no Pyro model and guide.
    :rtype: Contract
    """
    if not isinstance(vae, PyroVAE) or not (callable(vae.model) and callable(vae.guide)):
        missing = [n for n in ("model", "guide", "parameters") if not callable(getattr(vae, n, None))]
        raise TypeError(
            f"{type(vae).__name__} is not a Pyro model/guide pair: it needs callable model and "
            f"guide methods and torch module parameters (missing: {', '.join(missing) or 'to/state_dict'})"
        )
    config = vae.config if isinstance(vae, Configured) and isinstance(vae.config, dict) else None
    shape = config.get("image_shape") if config else None
    image_shape = tuple(shape) if shape else None
    decoder = vae.decoder if isinstance(vae, HasDecoder) else None
    x_dim = math.prod(image_shape) if image_shape else getattr(decoder, "x_dim", None)
    likelihood = vae.likelihood if isinstance(vae, HasLikelihood) else None
    q = vae.q if isinstance(vae, HasGuideNetwork) else None
    return Contract(
        setup=vae.guide.setup if isinstance(vae.guide, LazyGuide) else None,
        check_parameters=vae.check_parameters if isinstance(vae, ChecksParameters) else None,
        config=config,
        image_shape=image_shape,
        x_dim=None if x_dim is None else int(x_dim),
        check_support=likelihood.check if isinstance(likelihood, SupportCheck) else None,
        takes_num_data=takes_num_data(vae.model) and takes_num_data(vae.guide),
        fixed_batch_size=isinstance(q, HasBaseline) and q.baseline is not None,
        conditional=isinstance(vae, Conditional),
        num_classes=int(vae.condition.num_classes)
        if isinstance(vae, ClassConditional) and hasattr(vae.condition, "num_classes")
        else None,
        classifies=isinstance(vae, Classifies),
    )
