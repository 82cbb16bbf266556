"""The variational autoencoder as a Pyro model/guide pair.

Generative model (``VAE.model``), for each data point n in the data plate:

    z_n ~ p(z) = N(0, I_d)
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
import math
import operator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from .data import DataError, one_hot, with_quadrant_masks
from .guides import PointMass, guide_family
from .likelihoods import make_likelihood
from .networks import MLPDecoder, MLPEncoder, make_networks

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
        raise TypeError(f"{what} must be a floating-point tensor of shape {expected} (e.g. x.float()), "
                        f"got dtype {x.dtype}")


def _check_num_data(num_data, batch_size):
    """``num_data``: None, or an integer N ≥ B (a Python, NumPy or 0-d tensor integer); returns N."""
    if num_data is None:
        return None
    try:
        n = None if isinstance(num_data, bool) else operator.index(num_data)
    except TypeError:
        n = None
    if n is None or n < batch_size:
        raise ValueError(f"num_data must be an integer N at least the batch size {batch_size} (the size of the "
                         f"data set the batch stands for), got {num_data!r}")
    return n


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
    :param int x_dim: D (default: ``decoder.x_dim``); x must have shape ``(batch, D)``.
    :param dict guide_kwargs: extra arguments for the guide family.
    :param str name: the prefix of the networks' names in Pyro's param store (default:
        ``"vae"``, ``"vae_1"``, … for successive models, so that two models never share
        parameters).

    ``vae.model`` and ``vae.guide`` are ordinary Pyro callables (``pyro_method`` s of a
    :class:`~pyro.nn.PyroModule`): each registers its networks in the param store as
    ``pyro.module("<name>.decoder", ...)`` etc., so :class:`pyro.infer.SVI` with a
    ``pyro.optim`` optimizer trains them::

        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        svi.step(x_batch, num_data=len(train))    # the batch stands for N points

    and :class:`pyro.infer.autoguide.AutoNormal`, :class:`pyro.infer.NUTS` or
    :class:`pyro.infer.Predictive` take ``vae.model`` as they take any model.
    """

    def __init__(self, encoder, decoder, z_dim, likelihood="bernoulli", guide="diagonal", x_dim=None,
                 guide_kwargs=None, name=None):
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
            self.posterior = guide
        else:
            self.posterior = guide_family(guide)(encoder, z_dim=self.z_dim, **(guide_kwargs or {}))
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
        """p(z) = N(0, I_d): Pyro's ``Normal(0, 1).to_event(1)``, event shape ``(z_dim,)``,
        batch shape ``batch_shape``."""
        if not isinstance(batch_shape, (tuple, list, torch.Size)):
            raise TypeError(f"batch_shape must be a shape such as (B,), got {batch_shape!r}")
        loc = self._zero.new_zeros(tuple(batch_shape) + (self.z_dim,))
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def _check_x(self, x):
        """``x`` must be ``(batch, D)`` with B ≥ 1, of the parameters' floating dtype."""
        check_batch(x, self.x_dim)
        if x.shape[0] == 0:
            raise ValueError(f"x holds no data points: shape {tuple(x.shape)}")
        if x.dtype != self._zero.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {self._zero.dtype}: pass "
                            f"x.to({self._zero.dtype}) (or convert the model, e.g. vae.double())")

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
        """``z ~ posterior(inputs)`` in the data plate of the batch ``inputs`` (``(B, k)``),
        with the ``infer`` options of the family's ``site_infer(inputs, scale)`` if it has one."""
        posterior = self.posterior  # a pyro.module statement
        site_infer = getattr(posterior, "site_infer", None)
        batch_size = inputs.shape[0]
        with self.plate(batch_size, num_data, device=inputs.device):
            infer = site_infer(inputs, scale=(num_data or batch_size) / batch_size) if site_infer else None
            return pyro.sample("z", posterior(inputs), infer=infer)

    # ---- inference and generation --------------------------------------------------------
    def encode(self, x):
        """q(z|x): the guide's distribution for a batch ``x`` (``batch_shape == (batch,)``)."""
        self._check_x(x)
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


def _check_kind(model, kind, builder):
    if model is not None and model != kind:
        raise ValueError(f"{builder} builds model={kind!r}, but the settings are for model={model!r}; "
                         "rebuild them with pyro_vae.build_model(config), or load the run with pyro_vae.load_run")


def build_vae(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
              guide="diagonal", scale=None, guide_kwargs=None, model=None, name=None):
    """Build a VAE from plain settings (what ``run.json`` stores), with the package's
    networks; ``vae.config`` keeps the settings, and ``build_vae(**vae.config)`` builds
    the same model again.

    :param image_shape: ``(C, H, W)``.
    :param str network: ``"mlp"`` or ``"conv"``.
    :param str likelihood: ``"bernoulli"`` or ``"gaussian"``.
    :param float scale: a fixed Gaussian scale (default: learned per pixel).
    :param dict guide_kwargs: options of the guide family, e.g. ``{"reparameterized": False,
        "baseline": "neural"}`` for a score-function site with Pyro's NVIL-style baseline
        (:class:`~pyro_vae.guides.DiagonalNormal`), trained with ``"tracegraph"``.
    :param str model: ``"vae"`` or None (the key ``config["model"]`` names the builder).
    :param str name: the param-store prefix (:class:`VAE`).
    """
    _check_kind(model, "vae", "build_vae")
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    family = guide_family(guide)
    out_dims = family.encoder_out_dims(z_dim)
    encoder, decoder = make_networks(network, image_shape, z_dim, hidden_dims, encoder_out_dims=out_dims)
    vae = VAE(encoder, decoder, z_dim, likelihood=make_likelihood(likelihood, x_dim, scale=scale),
              guide=family, guide_kwargs=guide_kwargs, x_dim=x_dim, name=name)
    vae.config = dict(model="vae", image_shape=list(image_shape), z_dim=int(z_dim), network=network,
                      hidden_dims=list(hidden_dims), likelihood=likelihood, guide=guide if isinstance(guide, str)
                      else guide.__name__, scale=scale, guide_kwargs=guide_kwargs or {})
    return vae


#: Builders of the models a run folder can hold, by ``config["model"]``.
MODEL_BUILDERS = {"vae": build_vae}


def build_model(config):
    """Rebuild a model from the settings its ``config`` (``run.json``) stores."""
    config = dict(config)
    kind = config.get("model", "vae")
    try:
        builder = MODEL_BUILDERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {kind!r}; choose from {sorted(MODEL_BUILDERS)}") from None
    return builder(**config)


# ---- the autoencoder baseline ------------------------------------------------------------


class Autoencoder(VAE):
    r"""A deterministic autoencoder written as a Pyro model/guide pair: the VAE's baseline.

    Guide (:class:`~pyro_vae.guides.PointMass`): z_n = f_φ(x_n), q(z|x_n) = δ(z − f_φ(x_n)).

    Model: the VAE's decoder and likelihood p_θ(x|z); the site ``z`` is sampled from
    N(0, I) but masked (``poutine.mask(mask=False)``), so log p(z) adds nothing to any
    ELBO. With log q = 0 for a point mass, Pyro's ``Trace_ELBO`` loss is the
    reconstruction loss alone,

        loss(x) = −Σ_n log p_θ(x_n | z_n = f_φ(x_n))      (× N/B for a minibatch),

    with no KL term and no noise, and the :class:`~pyro_vae.training.Trainer` trains it
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
        posterior = self.posterior
        with self.plate(batch_size, num_data, device=x.device), pyro.poutine.mask(mask=False):
            return pyro.sample("z", posterior(x))


def build_autoencoder(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
                      guide=None, scale=None, guide_kwargs=None, model=None, name=None):
    """Build an :class:`Autoencoder` from the settings :func:`build_vae` takes, with the
    same encoder trunk and decoder (:func:`~pyro_vae.networks.make_networks`); the
    encoder's head gives the code alone.

    :param guide: must be None, ``"delta"`` or the default ``"diagonal"`` (accepted so that
        the command line's defaults work): an autoencoder's encoder is a point mass.
    """
    _check_kind(model, "ae", "build_autoencoder")
    if guide not in (None, "delta", "diagonal"):
        raise ValueError(f"the autoencoder's encoder is deterministic (a point mass); guide {guide!r} "
                         "does not apply to --model ae")
    if guide_kwargs:
        raise ValueError(f"the autoencoder takes no guide options, got {sorted(guide_kwargs)}")
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    encoder, decoder = make_networks(network, image_shape, z_dim, hidden_dims,
                                     encoder_out_dims=PointMass.encoder_out_dims(z_dim))
    ae = Autoencoder(encoder, decoder, z_dim, likelihood=make_likelihood(likelihood, x_dim, scale=scale),
                     x_dim=x_dim, name=name)
    ae.config = dict(model="ae", image_shape=list(image_shape), z_dim=int(z_dim), network=network,
                     hidden_dims=list(hidden_dims), likelihood=likelihood, guide="delta", scale=scale)
    return ae


MODEL_BUILDERS["ae"] = build_autoencoder


# ---- the conditional VAE -----------------------------------------------------------------


PRIORS = ("fixed", "learned")


class LabelCondition(nn.Module):
    r"""c is a class label in {0, …, K−1}; the networks see its one-hot code
    h(c) = e_c ∈ {0, 1}^K. All of x is modelled (no target mask).

    :param int num_classes: K.
    """

    def __init__(self, num_classes=10):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"a class condition needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes = int(num_classes)

    @property
    def dim(self):
        """The size of h(c): K."""
        return self.num_classes

    def forward(self, c, x=None):
        """h(c) = one-hot(c), ``(batch, K)``; ``c`` of shape ``(batch,)``."""
        if c is None:
            raise ValueError("the class-conditional VAE needs the labels c (shape (batch,))")
        h = one_hot(c, self.num_classes)
        if x is not None and h.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {h.shape[0]} labels")
        return h.to(x.device if x is not None else h.device)

    def target_mask(self, c):
        """None: every pixel of x is a target."""
        return None

    def prepare(self, data):
        """Check that ``data`` carries labels in range; batches are ``(x, y)``."""
        if data.y is None:
            raise DataError(f"{data.name or 'the data'} has no labels; the class-conditional VAE needs labelled "
                             "data (digits, mnist10k, mnist, fashion-mnist)")
        one_hot(data.y, self.num_classes)  # raises on labels out of range
        return data


class QuadrantCondition(nn.Module):
    r"""c is the observed part of the image itself, given by a mask m ∈ {0, 1}^D
    (1 = observed, e.g. :func:`~pyro_vae.data.quadrant_mask`); x's unobserved part
    x_u = {x_i : m_i = 0} is what the model predicts.

    The networks see h(x, m) = m ⊙ x − (1 − m), the observed pixels with −1 where a
    pixel is hidden (Pyro's CVAE example marks them so), of size D. The target mask is
    1 − m: log p(x_u | z, c) = Σ_i (1 − m_i) log p(x_i | z, c).
    """

    def __init__(self, x_dim):
        super().__init__()
        self.x_dim = int(x_dim)

    @property
    def dim(self):
        return self.x_dim

    def _check(self, m, x=None):
        if m is None:
            raise ValueError("the quadrant CVAE needs the observed-pixel mask c = m of shape (batch, D)")
        if m.dim() != 2 or m.shape[-1] != self.x_dim:
            raise ValueError(f"the observed-pixel mask must have shape (batch, {self.x_dim}), got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not torch.all((m == 0) | (m == 1)):
                raise ValueError("the observed-pixel mask must hold only 0/1 (or bool) values")
            m = m.bool()
        if x is not None and x.shape != m.shape:
            raise ValueError(f"images of shape {tuple(x.shape)} but a mask of shape {tuple(m.shape)}")
        return m

    def forward(self, c, x=None):
        """h = m ⊙ x − (1 − m), ``(batch, D)``; needs the image ``x`` (its observed part)."""
        if x is None:
            raise ValueError("the quadrant CVAE needs the image x: its observed pixels x⊙m are the condition")
        m = self._check(c, x)
        return torch.where(m, x, -torch.ones_like(x))

    def target_mask(self, c):
        """1 − m: the pixels whose likelihood the model counts."""
        return ~self._check(c)

    def prepare(self, data):
        """Every image once with each of 1, 2 and 3 given quadrants
        (:func:`~pyro_vae.data.with_quadrant_masks`); batches are ``(x, m)``."""
        if data.y is not None and data.y.dim() == 2:
            return data  # masks already attached
        return with_quadrant_masks(data, (1, 2, 3))


def _join(z, h):
    """[z, h] along the last axis, ``h`` (``(batch, k)``) broadcast over z's extra
    leading dimensions (vectorized particles)."""
    return torch.cat([z, h.expand(z.shape[:-1] + h.shape[-1:])], dim=-1)


class ConditionalVAE(VAE):
    r"""The conditional VAE (Sohn et al. 2015): c is an observed input of model and guide.

    Generative model (``model(x, c)``), for each n in the data plate:

        z_n ~ p_ψ(z | c_n)
        x_n ~ p_θ(x | z_n, c_n) = likelihood(decoder([z_n, h(c_n)]))

    guide (``guide(x, c)``): z_n ~ q_φ(z | x_n, c_n) = guide_family([x_n, h(c_n)]).
    The objective (any of :mod:`pyro_vae.objectives`) is then the conditional ELBO
    (the seed's eq. 47)

        log p(x|c) ≥ E_q(z|x,c)[log p(x|z,c)] − KL(q(z|x,c) ‖ p(z|c)).

    h(c) comes from ``condition``: :class:`LabelCondition` (one-hot class label) or
    :class:`QuadrantCondition` (c = the observed pixels x⊙m; only the others count in
    log p(x|z,c)).

    :param nn.Module encoder: ``[x, h] -> (loc, log_var)`` (input size D + dim h).
    :param nn.Module decoder: ``[z, h] -> θ`` (input size d + dim h, output D).
    :param int z_dim: d.
    :param nn.Module condition: the condition's features h and target mask.
    :param str prior: ``"fixed"``: p(z|c) = N(0, I), ignoring c; ``"learned"``:
        p(z|c) = N(μ_ψ(h), diag σ²_ψ(h)) from ``prior_net``.
    :param nn.Module prior_net: ``h -> (loc, log_var)``, for ``prior="learned"``.

    Other parameters (likelihood, guide family, ``name``) are those of :class:`VAE`:
    the same plate, likelihoods, guide families, objectives and
    :class:`~pyro_vae.training.Trainer` (``with_labels=True``) serve both.
    """

    def __init__(self, encoder, decoder, z_dim, condition, prior="fixed", prior_net=None,
                 likelihood="bernoulli", guide="diagonal", x_dim=None, guide_kwargs=None, name=None):
        super().__init__(encoder, decoder, z_dim, likelihood=likelihood, guide=guide, x_dim=x_dim,
                         guide_kwargs=guide_kwargs, name=name)
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; choose 'fixed' (N(0, I)) or 'learned' (a prior network)")
        if prior == "learned" and prior_net is None:
            raise ValueError("prior='learned' needs a prior_net mapping h(c) to (loc, log_var)")
        if prior == "fixed" and prior_net is not None:
            raise ValueError("a prior_net was given with prior='fixed'; pass prior='learned' to use it")
        self.condition = condition
        self.prior_kind = prior
        self.prior_net = prior_net

    # ---- the Pyro program ----------------------------------------------------------------
    def conditional_prior(self, h):
        """p(z|c) for features ``h`` (``(batch, k)``): batch shape ``(batch,)``, event ``(z_dim,)``."""
        if self.prior_net is None:
            return self.prior(h.shape[:1])
        loc, log_var = self.prior_net(h)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)

    def likelihood_given(self, z, h, mask=None):
        """p(x|z,c) = likelihood(decoder([z, h])); with a target ``mask``, only the
        pixels where it is True count: log p = Σ_i mask_i log p(x_i|z,c)."""
        px = self.likelihood(self.decoder(_join(z, h)))
        if mask is None:
            return px
        if not isinstance(px, dist.Independent):
            raise TypeError("masking the targets needs a likelihood that returns an Independent distribution")
        return px.base_dist.mask(mask).to_event(px.reinterpreted_batch_ndims)

    @pyro_method
    def model(self, x=None, c=None, num_data=None):
        """p(x, z | c) = p(z|c) p(x|z,c) for a batch.

        :param x: data ``(batch, D)``, or None to sample x (class labels only).
        :param c: the condition: labels ``(batch,)`` or an observed-pixel mask ``(batch, D)``.
        :param int num_data: N, if the batch stands for a data set of N points (scale N/B).
        """
        if x is not None:
            self._check_x(x)
        h = self.condition(c, x)
        mask = self.condition.target_mask(c)
        with self.plate(h.shape[0], num_data, device=h.device):
            z = pyro.sample("z", self.conditional_prior(h))
            return pyro.sample("x", self.likelihood_given(z, h, mask), obs=x)

    @pyro_method
    def guide(self, x=None, c=None, num_data=None):
        """q(z | x, c) = guide_family([x, h(c)])."""
        if x is None:
            raise ValueError("the guide q(z|x,c) needs the data x, a tensor of shape (batch, x_dim)")
        self._check_x(x)
        return self._sample_z(torch.cat([x, self.condition(c, x)], dim=-1), num_data)

    def prepare_data(self, data):
        """The data set in the form the Trainer passes to ``model(x, c)`` with
        ``with_labels=True``: labelled images, or images with quadrant masks."""
        return self.condition.prepare(data)

    # ---- inference and generation --------------------------------------------------------
    def encode(self, x, c):
        """q(z|x,c) for a batch."""
        self._check_x(x)
        return self.posterior(torch.cat([x, self.condition(c, x)], dim=-1))

    def decode(self, z, c, x=None, mean=True):
        """E[x|z,c] (or a draw if not ``mean``) for ``z`` of shape ``(*batch, d)``."""
        theta = self.decoder(_join(z, self.condition(c, x)))
        return self.likelihood.mean(theta) if mean else self.likelihood(theta).sample()

    def _labels(self, c, n):
        if not isinstance(self.condition, LabelCondition):
            raise ValueError("sample() draws class-conditional images; for the quadrant CVAE use "
                             "complete(x, mask) with the observed pixels")
        k = self.condition.num_classes
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if c is None:  # every class in turn
            return torch.arange(n or k, device=self._zero.device) % k
        c = torch.as_tensor(c, device=self._zero.device)
        if c.dim() == 0:
            return c.expand(1 if n is None else n)
        if n is not None and n != c.shape[0]:
            raise ValueError(f"n={n} samples asked for but {c.shape[0]} labels given")
        return c

    @torch.no_grad()
    def sample(self, n=None, c=None, mean=True):
        """Generation given the class: z ~ p(z|c), decoded.

        ``sample(c=2, n=16)`` draws sixteen 2s; ``c`` may also be a vector of labels (one
        image each), or None for the classes 0, 1, …, K−1, 0, … in turn.
        Returns ``(n, D)``.
        """
        c = self._labels(c, n)
        h = self.condition(c)
        z = self.conditional_prior(h).sample()
        return self.decode(z, c, mean=mean)

    @torch.no_grad()
    def complete(self, x, mask, n=1, mean=True):
        """Fill in the hidden pixels of ``x`` given the observed ones (``mask`` True):
        z ~ p(z|c), x_u = E[x_u|z,c] (or a draw). Returns ``(n, batch, D)`` with the
        observed pixels copied from ``x``."""
        if mask.dim() == 1:
            mask = mask.expand(x.shape[0], -1)
        h = self.condition(mask, x)
        z = self.conditional_prior(h).sample((n,))
        out = self.decode(z, mask, x, mean=mean)
        return torch.where(mask.bool(), x, out)

    @torch.no_grad()
    def reconstruct(self, x, c, mean=True, sample_z=False):
        """Encode then decode with the same c: z = E_q[z|x,c] (or a draw), E[x|z,c]."""
        q = self.encode(x, c)
        z = q.sample() if sample_z else q.mean
        return self.decode(z, c, x, mean=mean)


def _build_conditional(condition, kind, image_shape, z_dim, network, hidden_dims, likelihood, guide, scale,
                       guide_kwargs, prior, extra, model, name):
    _check_kind(model, kind, "build_cvae" if kind == "cvae" else "build_cvae_quadrant")
    if network != "mlp":
        raise ValueError(f"the conditional VAE's networks are MLPs over [x, h(c)] and [z, h(c)]; network "
                         f"{network!r} is not supported (use network='mlp')")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose 'fixed' (N(0, I)) or 'learned' (a prior network)")
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    family = guide_family(guide)
    encoder = MLPEncoder(x_dim + condition.dim, z_dim, hidden_dims, out_dims=family.encoder_out_dims(z_dim))
    decoder = MLPDecoder(z_dim + condition.dim, x_dim, hidden_dims[::-1])
    prior_net = MLPEncoder(condition.dim, z_dim, hidden_dims) if prior == "learned" else None
    model = ConditionalVAE(encoder, decoder, z_dim, condition, prior=prior, prior_net=prior_net,
                           likelihood=make_likelihood(likelihood, x_dim, scale=scale), guide=family,
                           guide_kwargs=guide_kwargs, x_dim=x_dim, name=name)
    model.config = dict(model=kind, image_shape=list(image_shape), z_dim=int(z_dim), network=network,
                        hidden_dims=list(hidden_dims), likelihood=likelihood,
                        guide=guide if isinstance(guide, str) else guide.__name__, scale=scale,
                        guide_kwargs=guide_kwargs or {}, prior=prior, **extra)
    return model


def build_cvae(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
               guide="diagonal", scale=None, guide_kwargs=None, num_classes=10, prior="fixed", model=None, name=None):
    """A class-conditional VAE (``model="cvae"``): c a label in 0..K−1, one-hot into
    MLP encoder [x, e_c] and decoder [z, e_c]; prior N(0, I) (``"fixed"``) or a prior
    network (``"learned"``). Other settings as :func:`build_vae`."""
    return _build_conditional(LabelCondition(num_classes), "cvae", image_shape, z_dim, network, hidden_dims,
                              likelihood, guide, scale, guide_kwargs, prior, dict(num_classes=int(num_classes)),
                              model, name)


def build_cvae_quadrant(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
                        guide="diagonal", scale=None, guide_kwargs=None, prior="learned", model=None, name=None):
    """The quadrant-completion CVAE (``model="cvae-quadrant"``): c the observed
    quadrants of an image, x the rest (:class:`QuadrantCondition`); prior a prior
    network p(z|c) by default, as in Sohn et al. 2015. Other settings as :func:`build_vae`."""
    x_dim = math.prod(int(s) for s in image_shape)
    return _build_conditional(QuadrantCondition(x_dim), "cvae-quadrant", image_shape, z_dim, network,
                              hidden_dims, likelihood, guide, scale, guide_kwargs, prior, {}, model, name)


MODEL_BUILDERS["cvae"] = build_cvae
MODEL_BUILDERS["cvae-quadrant"] = build_cvae_quadrant
