"""A linear-Gaussian VAE whose posterior and evidence are known in closed form:

    z ~ N(0, I₂),  x = W z + ε,  ε ~ N(0, σ² I₃),
    p(z|x) = N(Σ Wᵀ x/σ², Σ),  Σ = (I + WᵀW/σ²)⁻¹,  p(x) = N(0, WWᵀ + σ² I),

with a guide whose "encoder" gives the same outputs for every x (full covariance by default).
"""

import torch
from torch import nn

from pyro_vae.eval.gap import copy_with_guide_outputs
from pyro_vae.guides import guide_family
from pyro_vae.likelihoods import Gaussian
from pyro_vae.models import VAE

W = torch.tensor([[1.0, 0.8], [0.9, 1.1], [0.3, -0.2]])
SIGMA = 0.5
X = torch.tensor([[1.0, 1.5, -0.3]])


class ZeroEncoder(nn.Module):
    """Learnable outputs shared by every x, starting at 0 (a poor amortized guide)."""

    def __init__(self, sizes):
        super().__init__()
        self.outputs = nn.ParameterList(nn.Parameter(torch.zeros(1, k)) for k in sizes)

    def forward(self, x):
        return tuple(o.expand(x.shape[0], -1) for o in self.outputs)


def linear_gaussian_vae(family="full"):
    """z ~ N(0, I₂), x = W z + ε, ε ~ N(0, 0.5² I₃): the package's VAE with a linear decoder
    and the guide ``family`` (by name)."""
    decoder = nn.Linear(2, 3, bias=False)
    decoder.weight.data = W.clone()
    encoder = ZeroEncoder(guide_family(family).encoder_out_dims(2))
    return VAE(encoder, decoder, 2, likelihood=Gaussian(3, scale=SIGMA), guide=family)


def exact():
    """p(z|x) = N(Σ Wᵀ x/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹, and log p(x) = log N(x; 0, WWᵀ + σ² I)."""
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / SIGMA**2)
    mean = cov @ W.T @ X[0] / SIGMA**2
    log_px = torch.distributions.MultivariateNormal(torch.zeros(3), W @ W.T + SIGMA**2 * torch.eye(3)).log_prob(X[0])
    return mean, cov, log_px.item()


def with_gaussian_guide(vae, mean, cov):
    """The model with its full guide fixed at q = N(mean, cov)."""
    tril = torch.linalg.cholesky(cov)
    outputs = (mean[None], 2 * tril.diagonal().log()[None], tril[1, 0].reshape(1, 1))
    return copy_with_guide_outputs(vae, outputs)
