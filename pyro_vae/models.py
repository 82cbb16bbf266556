"""The variational autoencoder as a Pyro model/guide pair.

Generative model (``VAE.model``), for each data point n in the plate:

    z_n ~ p(z) = N(0, I_d)
    x_n ~ p_θ(x | z_n) = likelihood(decoder(z_n))

Amortized guide (``VAE.guide``): z_n ~ q_φ(z | x_n) = guide_family(x_n), by default
N(μ_φ(x_n), diag σ²_φ(x_n)), reparameterized.

Both run ``pyro.plate("data", size=N, subsample_size=B)``: a minibatch of B points
stands for a data set of N = ``num_data`` points, so every ELBO Pyro computes from a
minibatch is scaled by N/B and is an unbiased estimate of the full-data ELBO.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from .guides import guide_family
from .likelihoods import make_likelihood
from .networks import make_networks


class VAE(PyroModule):
    """A VAE: prior N(0, I), a decoder and likelihood p(x|z), an amortized guide q(z|x).

    :param nn.Module encoder: the guide family's encoder, e.g. ``x -> (loc, log_var)``
        for the diagonal family (see :mod:`pyro_vae.networks`).
    :param nn.Module decoder: ``z -> θ``, shape ``(*batch, x_dim)``.
    :param int z_dim: latent dimension d.
    :param likelihood: ``"bernoulli"``, ``"gaussian"`` or a likelihood module
        (:mod:`pyro_vae.likelihoods`).
    :param guide: a guide family name (``"diagonal"``), class, or built module
        (:mod:`pyro_vae.guides`).
    :param int num_data: N, the size of the data set a minibatch stands for; if None,
        each batch is taken to be the whole data set (no scaling).
    :param dict guide_kwargs: extra arguments for the guide family.

    Hand ``vae.model`` and ``vae.guide`` to :class:`pyro.infer.SVI` like any Pyro
    model and guide::

        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x_batch)
    """

    def __init__(self, encoder, decoder, z_dim, likelihood="bernoulli", guide="diagonal",
                 num_data=None, x_dim=None, guide_kwargs=None):
        super().__init__()
        self.z_dim = int(z_dim)
        self.decoder = decoder
        if isinstance(likelihood, str):
            x_dim = x_dim or getattr(decoder, "x_dim", None)
            if x_dim is None:
                raise ValueError("pass x_dim to build a likelihood by name")
            likelihood = make_likelihood(likelihood, x_dim)
        self.likelihood = likelihood
        if isinstance(guide, torch.nn.Module):
            self.posterior = guide
        else:
            self.posterior = guide_family(guide)(encoder, z_dim=self.z_dim, **(guide_kwargs or {}))
        self.num_data = num_data
        #: set by :func:`build_vae`: what is needed to build the same model again.
        self.config = None
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    # ---- the Pyro program ---------------------------------------------------------
    def plate(self, batch_size, device=None):
        """``pyro.plate("data", size=N, subsample_size=B)``: the data plate, scaled to N."""
        size = self.num_data or batch_size
        if size < batch_size:
            raise ValueError(f"a batch of {batch_size} points is larger than num_data={size}")
        return pyro.plate("data", size=size, subsample_size=batch_size, dim=-1,
                          device=device if device is not None else self._zero.device)

    def prior(self):
        """p(z) = N(0, I_d), event shape ``(z_dim,)``; the data plate adds the batch."""
        zero = self._zero.expand(self.z_dim)
        return dist.Normal(zero, zero + 1.0, validate_args=False).to_event(1)

    def model(self, x=None, batch_size=None):
        """p(x, z) = p(z) p(x|z) for a batch.

        :param x: observed data ``(batch, x_dim)``, or None to sample x from the model.
        :param int batch_size: the batch size when ``x`` is None.
        """
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        batch_size = x.shape[0] if x is not None else batch_size
        with self.plate(batch_size):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x=None, batch_size=None):
        """q(z|x) for a batch, from the guide family (the encoder network)."""
        pyro.module("posterior", self.posterior)
        with self.plate(x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    # ---- inference and generation --------------------------------------------------
    def encode(self, x):
        """q(z|x): the guide's distribution for a batch ``x`` (``batch_shape == (batch,)``)."""
        return self.posterior(x)

    def decode(self, z, mean=True):
        """Decode ``z`` (``(*batch, z_dim)``): E[x|z] if ``mean`` else a draw from p(x|z)."""
        theta = self.decoder(z)
        return self.likelihood.mean(theta) if mean else self.likelihood(theta).sample()

    @torch.no_grad()
    def sample(self, n, mean=True):
        """Generation: z ~ p(z) (``n`` draws), decoded; returns ``(n, x_dim)``."""
        z = self.prior().sample((n,))
        return self.decode(z, mean=mean)

    @torch.no_grad()
    def reconstruct(self, x, mean=True, sample_z=False):
        """Encode then decode: z = E_q[z|x] (or a draw if ``sample_z``), returns E[x|z]
        (or a draw from p(x|z) if not ``mean``)."""
        q = self.encode(x)
        z = q.sample() if sample_z else q.mean
        return self.decode(z, mean=mean)


def build_vae(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
              guide="diagonal", scale=None, guide_kwargs=None, num_data=None):
    """Build a VAE from plain settings (what ``run.json`` stores), with the package's
    networks; ``vae.config`` keeps the settings so a checkpoint can be rebuilt.

    :param image_shape: ``(C, H, W)``.
    :param str network: ``"mlp"`` or ``"conv"``.
    :param str likelihood: ``"bernoulli"`` or ``"gaussian"``.
    :param float scale: a fixed Gaussian scale (default: learned per pixel).
    """
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    family = guide_family(guide)
    out_dims = family.encoder_out_dims(z_dim)
    encoder, decoder = make_networks(network, image_shape, z_dim, hidden_dims, encoder_out_dims=out_dims)
    vae = VAE(encoder, decoder, z_dim, likelihood=make_likelihood(likelihood, x_dim, scale=scale),
              guide=family, num_data=num_data, guide_kwargs=guide_kwargs)
    vae.config = dict(model="vae", image_shape=list(image_shape), z_dim=int(z_dim), network=network,
                      hidden_dims=list(hidden_dims), likelihood=likelihood, guide=guide if isinstance(guide, str)
                      else guide.__name__, scale=scale, guide_kwargs=guide_kwargs or {})
    return vae


#: Builders of the models a run folder can hold, by ``config["model"]``.
MODEL_BUILDERS = {"vae": build_vae}


def build_model(config):
    """Rebuild a model from the settings its ``config`` (``run.json``) stores."""
    config = dict(config)
    name = config.pop("model", "vae")
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODEL_BUILDERS)}") from None
    return builder(**config)
