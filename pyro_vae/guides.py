"""Amortized variational families q(z|x).

A guide family is a :class:`torch.nn.Module` that owns the encoder network and maps a
batch ``x`` (``(batch, x_dim)``) to a Pyro distribution over z with
``batch_shape == (batch,)`` and ``event_shape == (z_dim,)``. The model never sees it:
:meth:`pyro_vae.models.VAE.guide` only does ``pyro.sample("z", family(x))`` inside the
data plate, so swapping the family never touches the model.

Each family says which encoder outputs it needs through :meth:`encoder_out_dims`, so
the same encoder architecture serves all of them.
"""

import pyro.distributions as dist
import torch
from torch import nn


class NonReparameterizedNormal(dist.Normal):
    """A Normal whose samples carry no reparameterized gradient (``has_rsample`` is
    False), so Pyro's ``TraceGraph_ELBO`` uses the score-function estimator
    ∇φ E_q[f(z)] = E_q[f(z) ∇φ log q_φ(z)] for it."""

    has_rsample = False

    def rsample(self, sample_shape=torch.Size()):
        raise NotImplementedError("NonReparameterizedNormal has no rsample; use sample()")


class DiagonalNormal(nn.Module):
    r"""q(z|x) = N(μ(x), diag σ²(x)), the encoder giving (μ, log σ²).

    z = μ + σ ⊙ ε, ε ~ N(0, I), σ = exp(½ log σ²): a reparameterized sample site.

    :param nn.Module encoder: ``x -> (loc, log_var)``, each ``(batch, z_dim)``.
    :param int z_dim: latent dimension d (every family takes it; unused here).
    :param bool reparameterized: if False, the site is *not* reparameterized
        (:class:`NonReparameterizedNormal`), for the score-function contrast with
        ``TraceGraph_ELBO``.
    """

    def __init__(self, encoder, z_dim=None, reparameterized=True):
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim
        self.reparameterized = reparameterized

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim, z_dim)

    def forward(self, x):
        loc, log_var = self.encoder(x)
        scale = torch.exp(0.5 * log_var)
        normal = dist.Normal if self.reparameterized else NonReparameterizedNormal
        return normal(loc, scale, validate_args=False).to_event(1)


#: Guide families by name; other issues add ``full`` and ``flow`` here.
GUIDES = {"diagonal": DiagonalNormal}


def guide_family(name):
    """The guide family class registered under ``name``, or ``name`` itself if it is
    already a class (a user's own family)."""
    if isinstance(name, type):
        return name
    try:
        return GUIDES[name]
    except KeyError:
        raise ValueError(f"unknown guide {name!r}; choose from {sorted(GUIDES)}") from None
