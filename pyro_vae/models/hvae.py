r"""A VAE with two stochastic layers (HVAE, L = 2) as one Pyro model/guide pair.

Generative model (``HierarchicalVAE.model``), for each data point n in the data plate:

    z2_n ~ p(z2)                              N(0, I), or the VampPrior over z2
    z1_n ~ p_θ(z1 | z2_n) = N(μ_θ(z2_n), diag σ²_θ(z2_n))
    x_n  ~ p_θ(x | z1_n, z2_n) = likelihood(decoder([z1_n, z2_n]))

Amortized guide (``HierarchicalVAE.guide``), the inference network of Tomczak & Welling's
two-level VampPrior model (2018, their Fig. 1b):

    z2_n ~ q_φ(z2 | x_n)                      a guide family on x
    z1_n ~ q_φ(z1 | x_n, z2_n)                a guide family on [x, z2]

so the ELBO is

    L(x) = E_q[log p(x | z1, z2) + log p(z1 | z2) + log p(z2) − log q(z2 | x) − log q(z1 | x, z2)].

With the VampPrior, p(z2) = (1/K) Σ_k q_φ(z2 | u_k), the top layer's guide at K learned
pseudo-inputs. Every site sits in the one data plate, so Pyro's ``Trace_ELBO``,
``TraceMeanField_ELBO`` (closed-form KL for z2 under N(0, I) and for z1 given z2: both
Gaussian), the IWAE bound, KL warm-up and :class:`~pyro_vae.amortized.AmortizedGuide`
(one joint guide over both sites) take the program as they take the one-layer VAE.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method

from ..guides import guide_family
from .vae import VAE


class HierarchicalVAE(VAE):
    r"""Two stochastic layers: p(z2) p(z1 | z2) p(x | z1, z2), guide q(z2 | x) q(z1 | x, z2).

    :param nn.Module encoder2: the top guide's encoder, ``x -> heads`` of q(z2 | x)
        (``(loc, log_var)`` for the diagonal family).
    :param nn.Module encoder1: the bottom guide's encoder, ``[x, z2] -> heads`` of
        q(z1 | x, z2), input ``(*batch, x_dim + z2_dim)``.
    :param nn.Module prior1: ``z2 -> (loc, log_var)`` of p(z1 | z2), each
        ``(*batch, z1_dim)``.
    :param nn.Module decoder: ``[z1, z2] -> θ`` of p(x | z1, z2), input
        ``(*batch, z1_dim + z2_dim)``, output ``(*batch, x_dim)``.
    :param int z1_dim: d1, the bottom layer's size.
    :param int z2_dim: d2, the top layer's size.
    :param guide: the top layer's guide family (name, class or module).
    :param guide1: the bottom layer's guide family (default: the same family as ``guide``).
    :param float min_log_var: log σ² of p(z1 | z2) is clamped to
        ``[min_log_var, max_log_var]`` (the VampPrior paper's hardtanh(−6, 2)), so that the
        prior's density stays bounded while the networks are young.
    :param float max_log_var: see ``min_log_var``.

    Other parameters (``likelihood``, ``x_dim``, ``prior``, ``pseudo_inputs``, ``name``,
    ``guide_kwargs``) are those of :class:`~pyro_vae.models.VAE`; ``prior`` and the
    VampPrior apply to z2.

    :ivar q: the top guide's module, ``x -> q(z2 | x)``.
    :ivar q1: the bottom guide's module, ``[x, z2] -> q(z1 | x, z2)``.
    """

    def __init__(
        self,
        encoder2,
        encoder1,
        prior1,
        decoder,
        z1_dim,
        z2_dim,
        likelihood="bernoulli",
        guide="diagonal",
        guide1=None,
        x_dim=None,
        guide_kwargs=None,
        name=None,
        prior="fixed",
        pseudo_inputs=None,
        min_log_var=-6.0,
        max_log_var=2.0,
    ):
        vamp = {} if pseudo_inputs is None else {"pseudo_inputs": pseudo_inputs}
        super().__init__(
            encoder2,
            decoder,
            z2_dim,
            likelihood=likelihood,
            guide=guide,
            x_dim=x_dim,
            guide_kwargs=guide_kwargs,
            name=name,
            prior=prior,
            **vamp,
        )
        self.z1_dim, self.z2_dim = int(z1_dim), int(z2_dim)
        family1 = guide if guide1 is None else guide1
        if isinstance(family1, torch.nn.Module):
            raise TypeError("guide1 must be a guide family's name or class; the module is built on encoder1")
        self.q1 = guide_family(family1)(encoder1, z_dim=self.z1_dim, **(guide_kwargs or {}))
        self.prior1 = prior1
        self.min_log_var, self.max_log_var = float(min_log_var), float(max_log_var)

    # ---- the Pyro program ----------------------------------------------------------------
    def prior_z1(self, z2):
        """p(z1 | z2) = N(μ_θ(z2), diag σ²_θ(z2)), batch shape ``z2.shape[:-1]``, event ``(z1_dim,)``."""
        loc, log_var = self.prior1(z2)[:2]
        log_var = log_var.clamp(self.min_log_var, self.max_log_var)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)

    def posterior_z1(self, x, z2):
        """q(z1 | x, z2), for ``x`` of shape ``(B, D)`` and ``z2`` of shape ``(*particles, B, d2)``."""
        x = x.expand(z2.shape[:-1] + x.shape[-1:])
        return self.q1(torch.cat([x, z2], dim=-1))

    def decoder_input(self, z1, z2):
        """``[z1, z2]``, the decoder's input."""
        return torch.cat([z1, z2], dim=-1)

    @pyro_method
    def model(self, x=None, batch_size=None, num_data=None):
        """p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1, z2) for a batch.

        :param x: observed data ``(batch, x_dim)``, or None to sample x from the model.
        :param int batch_size: the batch size when ``x`` is None.
        :param int num_data: N, if the batch stands for a data set of N points (scale N/B).
        """
        batch_size = self._batch_size(x, batch_size)
        decoder, likelihood = self.decoder, self.likelihood  # pyro.module statements
        with self.plate(batch_size, num_data, device=self._zero.device):
            z2 = pyro.sample("z2", self.prior((batch_size,)))
            z1 = pyro.sample("z1", self.prior_z1(z2))
            return pyro.sample("x", likelihood(decoder(self.decoder_input(z1, z2))), obs=x)

    @pyro_method
    def guide(self, x=None, batch_size=None, num_data=None):
        """q(z2 | x) q(z1 | x, z2) for a batch.

        :param x: the data ``(batch, x_dim)``.
        :param int num_data: N, as for :meth:`model`.
        """
        if x is None:
            raise ValueError("the guide q(z1, z2 | x) needs the data x, a tensor of shape (batch, x_dim)")
        self._check_x(x)
        q, _ = self.q, self.q1  # PyroModule attribute access: registers both guides' parameters
        with self.plate(x.shape[0], num_data, device=x.device):
            z2 = pyro.sample("z2", q(x))
            z1 = pyro.sample("z1", self.posterior_z1(x, z2))
        return z1, z2

    # ---- inference and generation --------------------------------------------------------
    def encode(self, x):
        """q(z2 | x), the top layer's guide distribution (``batch_shape == (batch,)``)."""
        self._check_x(x)
        return self.q(x)

    def encode_layers(self, x):
        """The guide's means of both layers, ``(E_q[z1 | x, z2 = E_q[z2|x]], E_q[z2 | x])``,
        shapes ``(B, d1)`` and ``(B, d2)``: what active units per layer are counted on."""
        z2 = self.encode(x).mean
        return self.posterior_z1(x, z2).mean, z2

    def decode(self, z, mean=True):
        """Decode ``z = [z1, z2]`` (``(*batch, d1 + d2)``), or the top layer ``z = z2`` alone
        (``(*batch, d2)``, with z1 = E[z1 | z2] of p(z1 | z2): what latent maps and
        interpolations of the encoding :meth:`encode` gives decode): E[x | z1, z2] if
        ``mean``, else a draw from p(x | z1, z2)."""
        if z.shape[-1] == self.z2_dim:
            z = self.decoder_input(self.prior_z1(z).mean, z)
        elif z.shape[-1] != self.z1_dim + self.z2_dim:
            raise ValueError(
                f"decode takes [z1, z2] of size {self.z1_dim + self.z2_dim} or z2 of size "
                f"{self.z2_dim}, got shape {tuple(z.shape)}"
            )
        theta = self.decoder(z)
        return self.likelihood.mean(theta) if mean else self.likelihood(theta).sample()

    @torch.no_grad()
    def sample(self, n, mean=True):
        """Generation: z2 ~ p(z2), z1 ~ p(z1 | z2), decoded; returns ``(n, x_dim)``."""
        z2 = self.prior().sample((n,))
        z1 = self.prior_z1(z2).sample()
        return self.decode(self.decoder_input(z1, z2), mean=mean)

    @torch.no_grad()
    def reconstruct(self, x, mean=True, sample_z=False):
        """Encode then decode: z2 = E_q[z2 | x], z1 = E_q[z1 | x, z2] (draws if ``sample_z``)."""
        q2 = self.encode(x)
        z2 = q2.sample() if sample_z else q2.mean
        q1 = self.posterior_z1(x, z2)
        z1 = q1.sample() if sample_z else q1.mean
        return self.decode(self.decoder_input(z1, z2), mean=mean)
