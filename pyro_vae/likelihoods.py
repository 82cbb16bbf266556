"""Observation models p(x|z): map the decoder's output θ = f(z) to a distribution over x.

Each likelihood is a :class:`torch.nn.Module` (it may own parameters, e.g. a learned
per-pixel scale) with three methods:

- ``forward(theta) -> Distribution`` with ``event_shape == (x_dim,)``;
- ``mean(theta)``: E[x|z], the picture one shows for a decoded z;
- ``check(x)``: raises :class:`ValueError` naming the problem when x cannot be data
  for this likelihood.
"""

import pyro.distributions as dist
import torch
from torch import nn


class Bernoulli(nn.Module):
    r"""p(x|z) = Π_i Bernoulli(x_i; σ(θ_i)), θ = decoder(z) the logits.

    log p(x|z) = Σ_i x_i θ_i − log(1 + e^{θ_i}): Pyro's ``Bernoulli(logits=θ).to_event(1)``,
    which validates (when Pyro's validation is on) that x lies in {0, 1}.
    """

    #: x must be in {0, 1}; gradients with respect to x do not exist.
    binary = True

    def forward(self, theta):
        return dist.Bernoulli(logits=theta).to_event(1)

    def mean(self, theta):
        return torch.sigmoid(theta)

    def check(self, x):
        if torch.isnan(x).any():
            raise ValueError(f"the data hold {int(torch.isnan(x).sum())} NaN values")
        if not torch.all((x == 0) | (x == 1)):
            bad = x[(x != 0) & (x != 1)]
            raise ValueError(
                "the Bernoulli likelihood needs binary data in {0, 1}, but the data hold "
                f"{bad.numel()} other values (e.g. {bad[0].item():.4g}); binarize it "
                "(binarize='dynamic' or 'static', CLI --binarize) or use likelihood='gaussian'"
            )


class Gaussian(nn.Module):
    r"""p(x|z) = Π_i Normal(x_i; θ_i, s_i), θ = decoder(z) the means.

    :param int x_dim: data dimension D.
    :param float scale: if given, a fixed scale s_i = scale; otherwise a learned
        per-pixel scale s_i = exp(ρ_i) (initialised at ``init_scale``).

    log p(x|z) = −½ Σ_i [((x_i − θ_i)/s_i)² + 2 log s_i + log 2π].
    """

    binary = False

    def __init__(self, x_dim, scale=None, init_scale=0.5, min_scale=1e-3):
        super().__init__()
        self.min_scale = min_scale
        if scale is None:
            self.log_scale = nn.Parameter(torch.full((x_dim,), float(init_scale)).log())
        else:
            if scale <= 0:
                raise ValueError(f"the Gaussian likelihood's scale must be positive, got {scale}")
            self.register_buffer("log_scale", torch.full((x_dim,), float(scale)).log())

    @property
    def scale(self):
        return self.log_scale.exp().clamp(min=self.min_scale)

    def forward(self, theta):
        return dist.Normal(theta, self.scale).to_event(1)

    def mean(self, theta):
        return theta

    def check(self, x):
        if not torch.isfinite(x).all():
            raise ValueError("the data hold NaN or inf values")


def make_likelihood(name, x_dim, scale=None):
    """Build a likelihood by name: ``"bernoulli"`` or ``"gaussian"`` (learned
    per-pixel scale unless ``scale`` is given)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(x_dim, scale=scale)
    raise ValueError(f"unknown likelihood {name!r}; choose 'bernoulli' or 'gaussian'")
