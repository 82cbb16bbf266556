r"""Training objectives, chosen by name. Each is a Pyro ELBO object (or has the same
``loss`` / ``differentiable_loss(model, guide, *args)`` interface), so it works with
:class:`pyro.infer.SVI` and with :func:`pyro_vae.train.trainer.fit`.

- ``"elbo"`` (``Trace_ELBO``): the ELBO with a Monte Carlo KL term,

      L(x) = E_q(z|x)[log p(x|z) + log p(z) − log q(z|x)],

  estimated with L reparameterized particles per data point.
- ``"meanfield"`` (``TraceMeanField_ELBO``): the same bound with the KL term in
  closed form where Pyro knows it (Theorem 1.1 for two Gaussians),

      L(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)),
      KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²).

- ``"tracegraph"`` (``TraceGraph_ELBO``): the ELBO whose gradient uses the
  score-function estimator at non-reparameterized sites.
- :class:`CompiledTrace_ELBO`: ``Trace_ELBO`` whose loss and gradients run as one
  compiled graph per call signature (:mod:`.compiled`); passed as an object.
- ``"iwae"`` (:class:`IWAE_ELBO`, K = ``num_particles``): the importance weighted
  bound of Burda, Grosse & Salakhutdinov (2015), per data point,

      L_K(x) = E[log (1/K) Σ_k p(x, z_k) / q(z_k|x)],  z_1..z_K ~ q(z|x),

  with L_1 = ELBO ≤ L_K ≤ L_{K+1} ≤ log p(x).

All losses are −ELBO summed over the batch and scaled by N/B by the data plate.
"""

import pyro.infer

from ..guides import PointMass
from .compiled import CompiledTrace_ELBO, TracedELBO, TracingError
from .fisher import FisherDivergence, fisher_objective
from .iwae import IWAE_ELBO

_ELBOS = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield": pyro.infer.TraceMeanField_ELBO,
    "tracegraph": pyro.infer.TraceGraph_ELBO,
}

#: Other spellings accepted for each name (Pyro's class names among them).
ALIASES = {
    "Trace_ELBO": "elbo",
    "trace": "elbo",
    "TraceMeanField_ELBO": "meanfield",
    "TraceGraph_ELBO": "tracegraph",
}


def _elbo_factory(cls):
    """``factory(num_particles=1, **kwargs)``: ``cls`` with L particles, vectorized when L > 1,
    and one plate (the data's)."""

    def factory(num_particles=1, **kw):
        return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1, **kw)

    return factory


#: Objective factories by name: ``factory(num_particles=..., **kwargs) -> ELBO``.
OBJECTIVES = {name: _elbo_factory(cls) for name, cls in _ELBOS.items()}
OBJECTIVES["iwae"] = lambda num_particles=5, **kw: IWAE_ELBO(num_particles=num_particles, **kw)
OBJECTIVES["fisher"] = fisher_objective
ALIASES.update({"IWAE_ELBO": "iwae", "IWAE": "iwae", "FisherDivergence": "fisher"})


def make_objective(name="elbo", num_particles=1, **kwargs):
    """Build an objective by name.

    :param str name: ``"elbo"``, ``"meanfield"``, ``"tracegraph"`` (or a Pyro class
        name such as ``"Trace_ELBO"``), or any name registered in :data:`OBJECTIVES`.
    :param int num_particles: L, samples of z per data point (vectorized when L > 1).
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    key = ALIASES.get(name, name)
    try:
        factory = OBJECTIVES[key]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}") from None
    return factory(num_particles=num_particles, **kwargs)


def objective_label(objective, model=None):
    """The name of an objective's loss, as progress lines, ``run.json`` and figures show it:
    ``"-ELBO"`` for Pyro's ELBOs, ``"-L_K"`` for the IWAE bound with K particles,
    ``"Fisher loss"`` for the Fisher divergence, and ``"reconstruction"`` for an ELBO of an
    autoencoder (a point-mass guide and a masked prior: −log p(x|z) alone).

    :param objective: an objective object (:func:`make_objective`) or its name.
    :param model: the model it trains, if known.
    """
    if isinstance(objective, str):
        objective = make_objective(objective)
    if isinstance(objective, IWAE_ELBO):
        return f"-L_{objective.num_particles}"
    if isinstance(objective, FisherDivergence):
        return "Fisher loss"
    if isinstance(getattr(model, "q", None), PointMass):
        return "reconstruction"
    return "-ELBO"


__all__ = [
    "ALIASES",
    "OBJECTIVES",
    "CompiledTrace_ELBO",
    "FisherDivergence",
    "IWAE_ELBO",
    "TracedELBO",
    "TracingError",
    "fisher_objective",
    "make_objective",
    "objective_label",
]
