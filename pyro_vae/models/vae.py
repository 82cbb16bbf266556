"""The variational autoencoder as a Pyro model/guide pair.

Generative model (``VAE.model``), for each data point n in the data plate:

    z_n ~ p(z) = N(0, I_d)                (or the VampPrior, ``prior="vamp"``)
    x_n ~ p_θ(x | z_n) = likelihood(decoder(z_n))

Amortized guide (``VAE.guide``): z_n ~ q_φ(z | x_n) = guide_family(x_n), by default
N(μ_φ(x_n), diag σ²_φ(x_n)), reparameterized.

Both run inside ``pyro.plate("data", B)`` over the B points of the batch they are given.
A minibatch that stands for a data set of N points is passed with ``num_data=N``: the
sites inside the plate are then scaled by N/B (``poutine.scale``), so every ELBO Pyro
computes from the minibatch is an unbiased estimate of the full-data ELBO. Nothing about
the data is kept on the model between calls.
"""

import contextlib
import itertools
import operator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from ..guides import PointMass, guide_family
from ..likelihoods import make_likelihood
from ..priors import PSEUDO_INPUTS, VampPrior

_COUNTERS = {}


def unique_name(prefix):
    """``prefix``, then ``prefix_1``, ``prefix_2``, …: the param-store name of each new
    model of a kind, so that two models in one process never share parameters."""
    k = next(_COUNTERS.setdefault(prefix, itertools.count()))
    return prefix if k == 0 else f"{prefix}_{k}"


def check_batch(x, x_dim, what="x"):
    """Raise a one-line error unless ``x`` is a floating-point tensor of shape ``(batch, x_dim)``.

    :param x: the data.
    :param int x_dim: D, or None if unknown (then only the rank is checked).
    """
    expected = f"(batch, {x_dim if x_dim is not None else 'x_dim'})"
    if not torch.is_tensor(x):
        raise TypeError(f"{what} must be a tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != 2 or (x_dim is not None and x.shape[-1] != x_dim):
        hint = "; a single data point is x[None] or x.reshape(1, -1)" if x.dim() < 2 else ""
        raise ValueError(f"{what} must have shape {expected}, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor of shape {expected} (e.g. x.float()), got dtype {x.dtype}"
        )


def _check_num_data(num_data, batch_size):
    """``num_data``: None, or an integer N ≥ B (a Python, NumPy or 0-d tensor integer); returns N."""
    if num_data is None:
        return None
    try:
        n = None if isinstance(num_data, bool) else operator.index(num_data)
    except TypeError:
        n = None
    if n is None or n < batch_size:
        raise ValueError(
            f"num_data must be an integer N at least the batch size {batch_size} (the size of the "
            f"data set the batch stands for), got {num_data!r}"
        )
    return n


#: The VAE's priors: ``"fixed"``, N(0, I); ``"vamp"``, the VampPrior.
VAE_PRIORS = ("fixed", "vamp")


def _check_vamp_encoder(encoder, x_dim, z_dim, family):
    """The VampPrior reads (μ, log σ²) from the first two outputs of the guide's encoder:
    refuse, when the model is built, an encoder that does not give two ``(B, z_dim)`` heads."""
    if encoder is None:
        raise ValueError(
            f"the VampPrior's components come from the guide's encoder, and the guide {family} "
            "has none (no .encoder attribute)"
        )
    param = next(iter(encoder.parameters()), None)
    probe = torch.zeros(
        1,
        x_dim,
        dtype=param.dtype if param is not None else torch.get_default_dtype(),
        device=param.device if param is not None else None,
    )
    with torch.no_grad():
        out = encoder(probe)
    heads = list(out[:2]) if isinstance(out, (tuple, list)) else []
    if len(heads) < 2 or any(not torch.is_tensor(h) or tuple(h.shape) != (1, z_dim) for h in heads):
        raise ValueError(
            f"the VampPrior needs the guide's encoder to give (loc, log_var, ...), two heads of "
            f"shape (batch, {z_dim}) first; the {family} encoder gives "
            f"{[tuple(o.shape) for o in out] if isinstance(out, (tuple, list)) else type(out).__name__}"
        )


class VAE(PyroModule):
    """A VAE: a prior p(z) (N(0, I), or the VampPrior), a decoder and likelihood p(x|z), an
    amortized guide q(z|x).

    :param nn.Module encoder: the guide family's encoder, e.g. ``x -> (loc, log_var)``
        for the diagonal family (see :mod:`pyro_vae.networks`).
    :param nn.Module decoder: ``z -> θ``, shape ``(*batch, x_dim)``.
    :param int z_dim: latent dimension d.
    :param likelihood: ``"bernoulli"``, ``"gaussian"`` or a likelihood module
        (:mod:`pyro_vae.likelihoods`).
    :param guide: a guide family name (``"diagonal"``), class, or built module
        (:mod:`pyro_vae.guides`).
    :param int x_dim: D (default: ``decoder.x_dim``); x must have shape ``(batch, D)``.
    :param dict guide_kwargs: extra arguments for the guide family.
    :param str name: the prefix of the networks' names in Pyro's param store (default:
        ``"vae"``, ``"vae_1"``, … for successive models, so that two models never share
        parameters).
    :param str prior: ``"fixed"`` (default), p(z) = N(0, I); or ``"vamp"``, the VampPrior
        p(z) = (1/K) Σ_k N(z; μ_φ(u_k), diag σ²_φ(u_k)) of K learned pseudo-inputs u_k
        (:class:`~pyro_vae.priors.VampPrior`): the model then shares the guide's encoder,
        and the Gaussians of its (μ, log σ²) heads are the prior's components, which for
        the diagonal guide are q_φ(z|u_k) (for a flow guide, its base Gaussians).
    :param int pseudo_inputs: K, for ``prior="vamp"``.

    ``vae.model`` and ``vae.guide`` are ordinary Pyro callables (``pyro_method`` s of a
    :class:`~pyro.nn.PyroModule`): each registers its networks in the param store as
    ``pyro.module("<name>.decoder", ...)`` etc., so :class:`pyro.infer.SVI` with a
    ``pyro.optim`` optimizer trains them::

        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x_batch, num_data=len(train))    # the batch stands for N points

    and :class:`pyro.infer.autoguide.AutoNormal`, :class:`pyro.infer.NUTS` or
    :class:`pyro.infer.Predictive` take ``vae.model`` as they take any model.

    :ivar q: the guide family's module, ``x -> q(z|x)`` (a distribution of batch shape
        ``(batch,)`` and event shape ``(d,)``); its network is ``vae.q.encoder``.
    :ivar decoder: the decoder network.
    """

    def __init__(
        self,
        encoder,
        decoder,
        z_dim,
        likelihood="bernoulli",
        guide="diagonal",
        x_dim=None,
        guide_kwargs=None,
        name=None,
        prior="fixed",
        pseudo_inputs=PSEUDO_INPUTS,
    ):
        super().__init__(name=unique_name(type(self).__name__.lower()) if name is None else name)
        #: a copy (``copy.deepcopy``, unpickling) of a model named automatically gets a new name
        self._auto_name = name is None
        self.z_dim = int(z_dim)
        self.x_dim = int(x_dim) if x_dim is not None else getattr(decoder, "x_dim", None)
        self.decoder = decoder
        if isinstance(likelihood, str):
            if self.x_dim is None:
                raise ValueError("pass x_dim to build a likelihood by name")
            likelihood = make_likelihood(likelihood, self.x_dim)
        self.likelihood = likelihood
        if isinstance(guide, torch.nn.Module):
            self.q = guide
        else:
            self.q = guide_family(guide)(encoder, z_dim=self.z_dim, **(guide_kwargs or {}))
        if prior not in VAE_PRIORS:
            raise ValueError(f"unknown prior {prior!r} for a VAE; choose 'fixed' (N(0, I)) or 'vamp' (the VampPrior)")
        if prior == "vamp":
            if self.x_dim is None:
                raise ValueError("pass x_dim to build a VampPrior (its pseudo-inputs have D entries)")
            _check_vamp_encoder(getattr(self.q, "encoder", None), self.x_dim, self.z_dim, type(self.q).__name__)
        #: the VampPrior's pseudo-inputs, or None for p(z) = N(0, I)
        self.vamp = VampPrior(self.x_dim, pseudo_inputs) if prior == "vamp" else None
        #: ``"fixed"`` or ``"vamp"``
        self.prior_kind = prior
        #: set by :func:`build_vae`: what is needed to build the same model again.
        self.config = None
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def __setstate__(self, state):
        """A copy of an automatically named model gets a name of its own, so that it does
        not train the original's parameters through the param store; a model given a
        ``name`` keeps it (the same name shares parameters in the store, as in Pyro)."""
        super().__setstate__(state)
        if self.__dict__.get("_auto_name"):
            self._pyro_name = unique_name(type(self).__name__.lower())

    # ---- the Pyro program ----------------------------------------------------------------
    @contextlib.contextmanager
    def plate(self, batch_size, num_data=None, device=None):
        """``pyro.plate("data", B)``, its sites scaled by N/B when ``num_data=N`` is given.

        :param int batch_size: B, the points in the batch.
        :param int num_data: N ≥ B, the size of the data set the batch stands for, or
            None (the batch is the data: scale 1).
        """
        num_data = _check_num_data(num_data, batch_size)
        with pyro.plate("data", batch_size, dim=-1, device=device) as indices:
            if num_data is None or num_data == batch_size:
                yield indices
            else:
                with poutine.scale(scale=num_data / batch_size):
                    yield indices

    def prior(self, batch_shape=()):
        """p(z), event shape ``(z_dim,)``, batch shape ``batch_shape``: N(0, I_d), Pyro's
        ``Normal(0, 1).to_event(1)``; or for the VampPrior a
        :class:`~pyro_vae.priors.DiagonalGaussianMixture` of the encoder's Gaussians at the
        pseudo-inputs."""
        if not isinstance(batch_shape, (tuple, list, torch.Size)):
            raise TypeError(f"batch_shape must be a shape such as (B,), got {batch_shape!r}")
        if self.vamp is not None:
            vamp, q = self.vamp, self.q  # pyro.module statements
            return vamp(q.encoder, tuple(batch_shape))
        loc = self._zero.new_zeros(tuple(batch_shape) + (self.z_dim,))
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _check_x(self, x):
        """``x`` must be ``(batch, D)`` with B ≥ 1, of the parameters' floating dtype."""
        check_batch(x, self.x_dim)
        if x.shape[0] == 0:
            raise ValueError(f"x holds no data points: shape {tuple(x.shape)}")
        if x.dtype != self._zero.dtype:
            raise TypeError(
                f"x has dtype {x.dtype} but the model's parameters are {self._zero.dtype}: pass "
                f"x.to({self._zero.dtype}) (or convert the model, e.g. vae.double())"
            )

    def _batch_size(self, x, batch_size):
        if x is not None:
            self._check_x(x)
            return x.shape[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"without data x, pass batch_size, a positive integer (got {batch_size!r})")
        return batch_size

    @pyro_method
    def model(self, x=None, batch_size=None, num_data=None):
        """p(x, z) = p(z) p(x|z) for a batch.

        :param x: observed data ``(batch, x_dim)``, or None to sample x from the model.
        :param int batch_size: the batch size when ``x`` is None.
        :param int num_data: N, if the batch stands for a data set of N points (scale N/B).
        """
        batch_size = self._batch_size(x, batch_size)
        decoder, likelihood = self.decoder, self.likelihood  # pyro.module statements
        with self.plate(batch_size, num_data, device=self._zero.device):
            z = pyro.sample("z", self.prior((batch_size,)))
            return pyro.sample("x", likelihood(decoder(z)), obs=x)

    @pyro_method
    def guide(self, x=None, batch_size=None, num_data=None):
        """q(z|x) for a batch, from the guide family (the encoder network). A family with
        a ``site_infer(x, scale)`` method gives the site's ``infer`` dict (e.g. Pyro's
        baselines for a score-function site, :meth:`~pyro_vae.guides.DiagonalNormal.site_infer`).

        :param x: the data ``(batch, x_dim)``.
        :param int num_data: N, as for :meth:`model`.
        """
        if x is None:
            raise ValueError("the guide q(z|x) needs the data x, a tensor of shape (batch, x_dim)")
        self._check_x(x)
        return self._sample_z(x, num_data)

    def _sample_z(self, inputs, num_data):
        """``z ~ q(z | inputs)`` in the data plate of the batch ``inputs`` (``(B, k)``),
        with the ``infer`` options of the family's ``site_infer(inputs, scale)`` if it has one."""
        q = self.q  # a pyro.module statement
        site_infer = getattr(q, "site_infer", None)
        batch_size = inputs.shape[0]
        with self.plate(batch_size, num_data, device=inputs.device):
            infer = site_infer(inputs, scale=(num_data or batch_size) / batch_size) if site_infer else None
            return pyro.sample("z", q(inputs), infer=infer)

    # ---- inference and generation --------------------------------------------------------
    def encode(self, x):
        """q(z|x): the guide's distribution for a batch ``x`` (``batch_shape == (batch,)``)."""
        self._check_x(x)
        return self.q(x)

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


class Autoencoder(VAE):
    r"""A deterministic autoencoder written as a Pyro model/guide pair: the VAE's baseline.

    Guide (:class:`~pyro_vae.guides.PointMass`): z_n = f_φ(x_n), q(z|x_n) = δ(z − f_φ(x_n)).

    Model: the VAE's decoder and likelihood p_θ(x|z); the site ``z`` is sampled from
    N(0, I) but masked (``poutine.mask(mask=False)``), so log p(z) adds nothing to any
    ELBO. With log q = 0 for a point mass, Pyro's ``Trace_ELBO`` loss is the
    reconstruction loss alone,

        loss(x) = −Σ_n log p_θ(x_n | z_n = f_φ(x_n))      (× N/B for a minibatch),

    with no KL term and no noise, and the :class:`~pyro_vae.train.trainer.Trainer` trains it
    like any VAE. Nothing asks the codes to fill N(0, I), yet :meth:`sample` decodes
    z ~ N(0, I): the comparison that :mod:`pyro_vae.eval` measures.

    :param nn.Module encoder: ``x -> (code,)``, one head of size ``z_dim``.
    :param nn.Module decoder: ``z -> θ``, as for the VAE.

    Other parameters are those of :class:`VAE` (``guide`` is always the point mass).
    """

    def __init__(self, encoder, decoder, z_dim, likelihood="bernoulli", x_dim=None, name=None):
        super().__init__(encoder, decoder, z_dim, likelihood=likelihood, guide=PointMass, x_dim=x_dim, name=name)

    @pyro_method
    def model(self, x=None, batch_size=None, num_data=None):
        """p(x|z) for a batch, z at the guide's code; the prior term is masked out."""
        batch_size = self._batch_size(x, batch_size)
        decoder, likelihood = self.decoder, self.likelihood
        with self.plate(batch_size, num_data, device=self._zero.device):
            with pyro.poutine.mask(mask=False):
                z = pyro.sample("z", self.prior((batch_size,)))
            return pyro.sample("x", likelihood(decoder(z)), obs=x)

    @pyro_method
    def guide(self, x=None, batch_size=None, num_data=None):
        """z = f_φ(x), a point mass. The site is masked as well, because
        ``TraceMeanField_ELBO`` weighs its analytic KL(q ‖ p) by the *guide* site's mask;
        so every objective sees neither log p(z) nor log q(z|x)."""
        if x is None:
            raise ValueError("the encoder needs the data x, a tensor of shape (batch, x_dim)")
        batch_size = self._batch_size(x, None)
        q = self.q
        with self.plate(batch_size, num_data, device=x.device), pyro.poutine.mask(mask=False):
            return pyro.sample("z", q(x))
