"""Learned priors p(z) for the VAE: a mixture of diagonal Gaussians, and the VampPrior.

The VampPrior (Tomczak & Welling 2018) is the mixture of the encoder's Gaussians at K
learned pseudo-inputs u_1..u_K,

    p_λ(z) = (1/K) Σ_k N(z; μ_φ(u_k), diag σ²_φ(u_k)),

which is (1/K) Σ_k q_φ(z|u_k) for the diagonal guide (for the other guides, the Gaussians
of the encoder's (μ, log σ²) heads, e.g. a flow's base distributions), so the prior is
pulled towards the aggregate posterior (1/N) Σ_n q_φ(z|x_n) that the ELBO's KL term would
have it be. Its parameters are the pseudo-inputs λ = (u_k), clamped to
the data's range [0, 1], and the encoder's weights, which the model shares with the guide.
"""

import math
import operator

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn

#: The VampPrior's number of pseudo-inputs K unless one is given (Tomczak & Welling's MNIST setting).
PSEUDO_INPUTS = 500


class DiagonalGaussianMixture(TorchDistribution):
    r"""p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), K components in d dimensions, the same
    mixture for every batch element.

    :param torch.Tensor loc: μ, ``(K, d)``.
    :param torch.Tensor scale: σ, ``(K, d)``, positive.
    :param torch.Tensor logits: log π up to a constant, ``(K,)`` (default: π_k = 1/K).
    :param batch_shape: the batch shape (the components broadcast over it).

    ``log_prob`` computes the K Mahalanobis terms of all points at once by two matrix
    products,

        Σ_j (z_j − μ_kj)² / σ_kj² = (z ⊙ z) · w_k − 2 z · (μ_k ⊙ w_k) + μ_k · (μ_k ⊙ w_k),
        w_k = 1/σ_k²,

    then log p(z) = logsumexp_k [log π_k − ½ Σ_j log(2π σ_kj²) − ½ Mahalanobis_k], with
    time and memory ``(points × K)`` rather than ``(points × K × d)`` as Pyro's
    ``MixtureSameFamily`` takes. The products cancel terms as large as Σ_j (z_j² + μ_kj²)/σ_kj²,
    so the log-density is computed in float64 whatever the inputs' dtype (float32 would err
    by nats at σ ≈ 0.01) and rounded once to the inputs' dtype. Not reparameterized
    (``sample`` draws a component, then a Gaussian); a VAE's prior is scored at the
    guide's z, never sampled for a gradient.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "logits": constraints.real}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, loc, scale, logits=None, batch_shape=(), validate_args=None):
        if loc.dim() != 2 or scale.shape != loc.shape:
            raise ValueError(
                f"loc and scale must both have shape (K, d), got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if logits is None:
            logits = loc.new_zeros(loc.shape[:1])
        if logits.shape != loc.shape[:1]:
            raise ValueError(f"logits must have shape (K,) = {tuple(loc.shape[:1])}, got {tuple(logits.shape)}")
        self.loc, self.scale, self.logits = loc, scale, logits
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        try:
            fits = torch.broadcast_shapes(batch_shape, self.batch_shape) == batch_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"cannot expand a mixture of batch shape {tuple(self.batch_shape)} to {tuple(batch_shape)}"
            )
        return type(self)(
            self.loc, self.scale, self.logits, batch_shape, validate_args=self.__dict__.get("_validate_args")
        )

    @property
    def num_components(self):
        return self.loc.shape[0]

    def component_log_prob(self, value):
        """log π_k + log N(z; μ_k, diag σ_k²) for every point: ``(*value.shape[:-1], K)``,
        in float64."""
        d = self.loc.shape[-1]
        z = value.reshape(-1, d).double()
        loc, scale = self.loc.double(), self.scale.double()
        w = scale.pow(-2)
        mw = loc * w
        maha = ((z * z) @ w.T - 2 * (z @ mw.T) + (loc * mw).sum(-1)).clamp_min(0)
        log_norm = -torch.log(scale).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        logits = self.logits.double()
        out = logits - torch.logsumexp(logits, -1) + log_norm - 0.5 * maha
        return out.reshape(value.shape[:-1] + (self.num_components,))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dtype = torch.promote_types(value.dtype, self.loc.dtype)
        lp = torch.logsumexp(self.component_log_prob(value), -1).to(dtype)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(shape[:-1])
            eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return self.loc[k] + self.scale[k] * eps

    @property
    def mean(self):
        pi = torch.softmax(self.logits, -1)
        return (pi @ self.loc).expand(self._extended_shape())

    @property
    def variance(self):
        pi = torch.softmax(self.logits, -1)
        second = pi @ (self.scale**2 + self.loc**2)
        return (second - (pi @ self.loc) ** 2).expand(self._extended_shape())


class VampPrior(nn.Module):
    r"""The VampPrior's pseudo-inputs: p(z) = (1/K) Σ_k N(z; μ_φ(u_k), diag σ²_φ(u_k)).

    :param int x_dim: D, the size of a pseudo-input.
    :param int num_components: K.
    :param float init_mean: the pseudo-inputs start at N(init_mean, init_std²), Tomczak &
        Welling's MNIST settings.
    :param float init_std: see ``init_mean``.

    The pseudo-inputs u_k = clamp(P_k, 0, 1) (``hardtanh``), P the ``(K, D)`` parameter
    ``pseudo_inputs``. The encoder is not a part of this module: it is the guide's, passed
    to :meth:`forward`, so that each of its weights has one name in Pyro's param store.
    """

    def __init__(self, x_dim, num_components=PSEUDO_INPUTS, init_mean=0.05, init_std=0.01):
        super().__init__()
        try:
            k = None if isinstance(num_components, bool) else operator.index(num_components)
        except TypeError:
            k = None
        if k is None or k < 1:
            raise ValueError(f"the VampPrior needs a positive integer number of pseudo-inputs, got {num_components!r}")
        num_components = k
        self.pseudo_inputs = nn.Parameter(torch.randn(num_components, int(x_dim)) * init_std + init_mean)

    def forward(self, encoder, batch_shape=()):
        """The mixture, batch shape ``batch_shape``.

        :param nn.Module encoder: the guide's encoder, ``x -> (loc, log_var, ...)``: every
            family of :mod:`pyro_vae.guides` with a Gaussian base puts μ and log σ² first.
            For the diagonal guide the components are q_φ(z|u_k) themselves; for the flow
            guide they are its base Gaussians (before the flow's transforms), for the
            full-covariance guide N(μ, diag exp(log σ²)) from its diagonal head.
        """
        u = nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        loc, log_var = encoder(u)[:2]
        return DiagonalGaussianMixture(loc, torch.exp(0.5 * log_var), batch_shape=batch_shape)
