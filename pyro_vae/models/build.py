"""Build a model from the plain settings ``run.json`` stores.

Every kind is built the same way: the image shape gives D = C·H·W, the guide family gives
the encoder's heads, :func:`~pyro_vae.networks.make_networks` (or the conditional MLPs)
gives the networks, and ``model.config`` keeps the settings, so that
``build_model(model.config)`` builds the same architecture again::

    vae = build_model({"model": "vae", "image_shape": [1, 28, 28], "z_dim": 50})

``MODEL_BUILDERS`` maps ``config["model"]`` to the builder of that kind.
"""

import math

from ..guides import PointMass, guide_family
from ..likelihoods import make_likelihood
from ..networks import MLPDecoder, MLPEncoder, make_networks
from ..priors import PSEUDO_INPUTS
from .cvae import PRIORS, ConditionalVAE, LabelCondition, QuadrantCondition
from .vae import VAE, Autoencoder


def _check_kind(model, kind, builder):
    if model is not None and model != kind:
        raise ValueError(f"{builder} builds model={kind!r}, but the settings are for model={model!r}; "
                         "rebuild them with pyro_vae.build_model(config), or load the run with pyro_vae.load_run")


def _observation(image_shape, likelihood, scale):
    """``(image_shape, D, likelihood module)`` for images of shape ``(C, H, W)``."""
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    return image_shape, x_dim, make_likelihood(likelihood, x_dim, scale=scale)


def _config(kind, image_shape, z_dim, network, hidden_dims, likelihood, guide, scale, **extra):
    """The settings ``run.json`` stores for a model of ``kind``."""
    return dict(model=kind, image_shape=list(image_shape), z_dim=int(z_dim), network=network,
                hidden_dims=[int(h) for h in hidden_dims], likelihood=likelihood,
                guide=guide if isinstance(guide, str) else guide.__name__, scale=scale, **extra)


def build_vae(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
              guide="diagonal", scale=None, guide_kwargs=None, prior=None, pseudo_inputs=None, model=None,
              name=None):
    """A :class:`~pyro_vae.models.VAE` with the package's networks.

    :param image_shape: ``(C, H, W)``.
    :param int z_dim: latent dimension d.
    :param str network: ``"mlp"`` or ``"conv"``.
    :param hidden_dims: the MLP's hidden widths (the decoder mirrors them).
    :param str likelihood: ``"bernoulli"`` or ``"gaussian"``.
    :param float scale: a fixed Gaussian scale (default: learned per pixel).
    :param guide: a guide family name or class (:func:`~pyro_vae.guides.guide_family`).
    :param dict guide_kwargs: options of the guide family, e.g. ``{"reparameterized": False,
        "baseline": "neural"}`` for a score-function site with Pyro's NVIL-style baseline
        (:class:`~pyro_vae.guides.DiagonalNormal`), trained with ``"tracegraph"``.
    :param str prior: None or ``"fixed"``, p(z) = N(0, I); ``"vamp"``, the VampPrior
        (:class:`~pyro_vae.priors.VampPrior`).
    :param int pseudo_inputs: the VampPrior's K (default 500); only with ``prior="vamp"``.
    :param str model: ``"vae"`` or None (the key ``config["model"]`` names the builder).
    :param str name: the param-store prefix (:class:`~pyro_vae.models.VAE`).
    """
    _check_kind(model, "vae", "build_vae")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    family = guide_family(guide)
    if pseudo_inputs is not None and prior != "vamp":
        raise ValueError(f"pseudo_inputs={pseudo_inputs!r} is the VampPrior's K; pass prior='vamp' to use it")
    vamp = dict(pseudo_inputs=PSEUDO_INPUTS if pseudo_inputs is None else pseudo_inputs) if prior == "vamp" else {}
    encoder, decoder = make_networks(network, image_shape, z_dim, hidden_dims,
                                     encoder_out_dims=family.encoder_out_dims(z_dim))
    vae = VAE(encoder, decoder, z_dim, likelihood=lik, guide=family, guide_kwargs=guide_kwargs, x_dim=x_dim,
              name=name, prior=prior or "fixed", **vamp)
    vae.config = _config("vae", image_shape, z_dim, network, hidden_dims, likelihood, guide, scale,
                         guide_kwargs=guide_kwargs or {}, **(dict(prior="vamp", **vamp) if vamp else {}))
    return vae


def build_autoencoder(image_shape, z_dim=50, network="mlp", hidden_dims=(400,), likelihood="bernoulli",
                      guide=None, scale=None, guide_kwargs=None, model=None, name=None):
    """An :class:`~pyro_vae.models.Autoencoder` from the settings :func:`build_vae` takes,
    with the same encoder trunk and decoder; the encoder's head gives the code alone.

    :param guide: must be None, ``"delta"`` or the default ``"diagonal"`` (accepted so that
        the command line's defaults work): an autoencoder's encoder is a point mass.
    """
    _check_kind(model, "ae", "build_autoencoder")
    if guide not in (None, "delta", "diagonal"):
        raise ValueError(f"the autoencoder's encoder is deterministic (a point mass); guide {guide!r} "
                         "does not apply to --model ae")
    if guide_kwargs:
        raise ValueError(f"the autoencoder takes no guide options, got {sorted(guide_kwargs)}")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    encoder, decoder = make_networks(network, image_shape, z_dim, hidden_dims,
                                     encoder_out_dims=PointMass.encoder_out_dims(z_dim))
    ae = Autoencoder(encoder, decoder, z_dim, likelihood=lik, x_dim=x_dim, name=name)
    ae.config = _config("ae", image_shape, z_dim, network, hidden_dims, likelihood, "delta", scale)
    return ae


def _build_conditional(condition, kind, image_shape, z_dim, network, hidden_dims, likelihood, guide, scale,
                       guide_kwargs, prior, extra, model, name):
    _check_kind(model, kind, "build_cvae" if kind == "cvae" else "build_cvae_quadrant")
    if network != "mlp":
        raise ValueError(f"the conditional VAE's networks are MLPs over [x, h(c)] and [z, h(c)]; network "
                         f"{network!r} is not supported (use network='mlp')")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose 'fixed' (N(0, I)) or 'learned' (a prior network)")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    family = guide_family(guide)
    encoder = MLPEncoder(x_dim + condition.dim, z_dim, hidden_dims, out_dims=family.encoder_out_dims(z_dim))
    decoder = MLPDecoder(z_dim + condition.dim, x_dim, hidden_dims[::-1])
    prior_net = MLPEncoder(condition.dim, z_dim, hidden_dims) if prior == "learned" else None
    model = ConditionalVAE(encoder, decoder, z_dim, condition, prior=prior, prior_net=prior_net, likelihood=lik,
                           guide=family, guide_kwargs=guide_kwargs, x_dim=x_dim, name=name)
    model.config = _config(kind, image_shape, z_dim, network, hidden_dims, likelihood, guide, scale,
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
    quadrants of an image, x the rest (:class:`~pyro_vae.models.QuadrantCondition`); prior
    a prior network p(z|c) by default, as in Sohn et al. 2015. Other settings as
    :func:`build_vae`."""
    x_dim = math.prod(int(s) for s in image_shape)
    return _build_conditional(QuadrantCondition(x_dim), "cvae-quadrant", image_shape, z_dim, network,
                              hidden_dims, likelihood, guide, scale, guide_kwargs, prior, {}, model, name)


#: The builder of each model kind a run folder can hold, by ``config["model"]``.
MODEL_BUILDERS = {"vae": build_vae, "ae": build_autoencoder, "cvae": build_cvae,
                  "cvae-quadrant": build_cvae_quadrant}


def build_model(config):
    """Rebuild a model from the settings its ``config`` (``run.json``'s ``model``) stores."""
    config = dict(config)
    kind = config.get("model", "vae")
    try:
        builder = MODEL_BUILDERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {kind!r}; choose from {sorted(MODEL_BUILDERS)}") from None
    return builder(**config)
