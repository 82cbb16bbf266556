r"""Training objectives, chosen by name. Each is a Pyro ELBO object (or has the same
``loss`` / ``differentiable_loss(model, guide, *args)`` interface), so it works with
:class:`pyro.infer.SVI` and with :func:`pyro_vae.training.fit`.

- ``"elbo"`` (``Trace_ELBO``): the ELBO with a Monte Carlo KL term,

      L(x) = E_q(z|x)[log p(x|z) + log p(z) − log q(z|x)],

  estimated with L reparameterized particles per data point.
- ``"meanfield"`` (``TraceMeanField_ELBO``): the same bound with the KL term in
  closed form where Pyro knows it (Theorem 1.1 for two Gaussians),

      L(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)),
      KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²).

- ``"tracegraph"`` (``TraceGraph_ELBO``): the ELBO whose gradient uses the
  score-function estimator at non-reparameterized sites.

All losses are −ELBO summed over the batch and scaled by N/B by the data plate.
"""

import pyro.infer

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

#: Objective factories by name: ``factory(num_particles=..., **kwargs) -> ELBO``.
#: Other modules register more (``iwae``, ``fisher``).
OBJECTIVES = {
    name: (lambda cls: lambda num_particles=1, **kw: cls(
        num_particles=num_particles, vectorize_particles=num_particles > 1,
        max_plate_nesting=1, **kw))(cls)
    for name, cls in _ELBOS.items()
}


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
