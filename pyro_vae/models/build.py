"""Build a model from the plain settings ``run.json`` stores.

Every kind is built the same way: the image shape gives D = C·H·W, the guide family gives
the encoder's heads, :func:`~pyro_vae.networks.make_networks` (or the conditional MLPs)
gives the networks, and ``model.config`` keeps the settings, so that
``build_model(model.config)`` builds the same architecture again::

    vae = build_model({"model": "vae", "image_shape": [1, 28, 28], "z_dim": 50})

``MODEL_BUILDERS`` maps ``config["model"]`` to the builder of that kind.
"""

import math

import torch

from ..guides import PointMass, guide_family
from ..likelihoods import make_likelihood
from ..networks import MLPDecoder, MLPEncoder, MultiHead, hidden_stack, make_networks
from ..priors import PSEUDO_INPUTS
from .cvae import PRIORS, ConditionalVAE, LabelCondition, QuadrantCondition
from .hvae import HierarchicalVAE
from .m1m2 import FeatureMap, StackedSemiSupervisedVAE
from .ssvae import ALPHA, Classifier, SemiSupervisedVAE
from .vae import VAE, Autoencoder


def _check_kind(model, kind, builder):
    if model is not None and model != kind:
        raise ValueError(
            f"{builder} builds model={kind!r}, but the settings are for model={model!r}; "
            "rebuild them with pyro_vae.build_model(config), or load the run with pyro_vae.load_run"
        )


def _observation(image_shape, likelihood, scale):
    """``(image_shape, D, likelihood module)`` for images of shape ``(C, H, W)``."""
    image_shape = tuple(int(s) for s in image_shape)
    x_dim = math.prod(image_shape)
    return image_shape, x_dim, make_likelihood(likelihood, x_dim, scale=scale)


def _config(kind, image_shape, z_dim, network, hidden_dims, likelihood, guide, scale, **extra):
    """The settings ``run.json`` stores for a model of ``kind``."""
    return dict(
        model=kind,
        image_shape=list(image_shape),
        z_dim=int(z_dim),
        network=network,
        hidden_dims=[int(h) for h in hidden_dims],
        likelihood=likelihood,
        guide=guide if isinstance(guide, str) else guide.__name__,
        scale=scale,
        **extra,
    )


def build_vae(
    image_shape,
    z_dim=50,
    network="mlp",
    hidden_dims=(400,),
    likelihood="bernoulli",
    guide="diagonal",
    scale=None,
    guide_kwargs=None,
    prior=None,
    pseudo_inputs=None,
    model=None,
    name=None,
):
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
    encoder, decoder = make_networks(
        network, image_shape, z_dim, hidden_dims, encoder_out_dims=family.encoder_out_dims(z_dim)
    )
    vae = VAE(
        encoder,
        decoder,
        z_dim,
        likelihood=lik,
        guide=family,
        guide_kwargs=guide_kwargs,
        x_dim=x_dim,
        name=name,
        prior=prior or "fixed",
        **vamp,
    )
    vae.config = _config(
        "vae",
        image_shape,
        z_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        guide_kwargs=guide_kwargs or {},
        **(dict(prior="vamp", **vamp) if vamp else {}),
    )
    return vae


def build_autoencoder(
    image_shape,
    z_dim=50,
    network="mlp",
    hidden_dims=(400,),
    likelihood="bernoulli",
    guide=None,
    scale=None,
    guide_kwargs=None,
    model=None,
    name=None,
):
    """An :class:`~pyro_vae.models.Autoencoder` from the settings :func:`build_vae` takes,
    with the same encoder trunk and decoder; the encoder's head gives the code alone.

    :param guide: must be None, ``"delta"`` or the default ``"diagonal"`` (accepted so that
        the command line's defaults work): an autoencoder's encoder is a point mass.
    """
    _check_kind(model, "ae", "build_autoencoder")
    if guide not in (None, "delta", "diagonal"):
        raise ValueError(
            f"the autoencoder's encoder is deterministic (a point mass); guide {guide!r} does not apply to --model ae"
        )
    if guide_kwargs:
        raise ValueError(f"the autoencoder takes no guide options, got {sorted(guide_kwargs)}")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    encoder, decoder = make_networks(
        network, image_shape, z_dim, hidden_dims, encoder_out_dims=PointMass.encoder_out_dims(z_dim)
    )
    ae = Autoencoder(encoder, decoder, z_dim, likelihood=lik, x_dim=x_dim, name=name)
    ae.config = _config("ae", image_shape, z_dim, network, hidden_dims, likelihood, "delta", scale)
    return ae


def _build_conditional(
    condition,
    kind,
    image_shape,
    z_dim,
    network,
    hidden_dims,
    likelihood,
    guide,
    scale,
    guide_kwargs,
    prior,
    extra,
    model,
    name,
):
    _check_kind(model, kind, "build_cvae" if kind == "cvae" else "build_cvae_quadrant")
    if network != "mlp":
        raise ValueError(
            f"the conditional VAE's networks are MLPs over [x, h(c)] and [z, h(c)]; network "
            f"{network!r} is not supported (use network='mlp')"
        )
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose 'fixed' (N(0, I)) or 'learned' (a prior network)")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    family = guide_family(guide)
    encoder = MLPEncoder(x_dim + condition.dim, z_dim, hidden_dims, out_dims=family.encoder_out_dims(z_dim))
    decoder = MLPDecoder(z_dim + condition.dim, x_dim, hidden_dims[::-1])
    prior_net = MLPEncoder(condition.dim, z_dim, hidden_dims) if prior == "learned" else None
    model = ConditionalVAE(
        encoder,
        decoder,
        z_dim,
        condition,
        prior=prior,
        prior_net=prior_net,
        likelihood=lik,
        guide=family,
        guide_kwargs=guide_kwargs,
        x_dim=x_dim,
        name=name,
    )
    model.config = _config(
        kind,
        image_shape,
        z_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        guide_kwargs=guide_kwargs or {},
        prior=prior,
        **extra,
    )
    return model


def build_cvae(
    image_shape,
    z_dim=50,
    network="mlp",
    hidden_dims=(400,),
    likelihood="bernoulli",
    guide="diagonal",
    scale=None,
    guide_kwargs=None,
    num_classes=10,
    prior="fixed",
    model=None,
    name=None,
):
    """A class-conditional VAE (``model="cvae"``): c a label in 0..K−1, one-hot into
    MLP encoder [x, e_c] and decoder [z, e_c]; prior N(0, I) (``"fixed"``) or a prior
    network (``"learned"``). Other settings as :func:`build_vae`."""
    return _build_conditional(
        LabelCondition(num_classes),
        "cvae",
        image_shape,
        z_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        guide_kwargs,
        prior,
        dict(num_classes=int(num_classes)),
        model,
        name,
    )


def build_cvae_quadrant(
    image_shape,
    z_dim=50,
    network="mlp",
    hidden_dims=(400,),
    likelihood="bernoulli",
    guide="diagonal",
    scale=None,
    guide_kwargs=None,
    prior="learned",
    model=None,
    name=None,
):
    """The quadrant-completion CVAE (``model="cvae-quadrant"``): c the observed
    quadrants of an image, x the rest (:class:`~pyro_vae.models.QuadrantCondition`); prior
    a prior network p(z|c) by default, as in Sohn et al. 2015. Other settings as
    :func:`build_vae`."""
    x_dim = math.prod(int(s) for s in image_shape)
    return _build_conditional(
        QuadrantCondition(x_dim),
        "cvae-quadrant",
        image_shape,
        z_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        guide_kwargs,
        prior,
        {},
        model,
        name,
    )


def build_ssvae(
    image_shape,
    z_dim=50,
    network="mlp",
    hidden_dims=(400,),
    likelihood="bernoulli",
    guide="diagonal",
    scale=None,
    guide_kwargs=None,
    num_classes=10,
    alpha=ALPHA,
    model=None,
    name=None,
):
    """The semi-supervised VAE M2 (``model="ssvae"``, :class:`~pyro_vae.models.SemiSupervisedVAE`):
    the class-conditional VAE's networks (:func:`build_cvae`: encoder [x, e_y], decoder
    [z, e_y], prior N(0, I)) and a classifier q(y|x), an MLP of the same hidden widths.

    :param float alpha: α, the weight per labelled point of log q(y|x) in the training loss.

    Other settings as :func:`build_cvae`."""
    _check_kind(model, "ssvae", "build_ssvae")
    cvae = _build_conditional(
        LabelCondition(num_classes),
        "cvae",
        image_shape,
        z_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        guide_kwargs,
        "fixed",
        {},
        None,
        name,
    )
    classifier = Classifier(cvae.x_dim, num_classes, hidden_dims)
    ssvae = SemiSupervisedVAE(
        cvae.q.encoder,
        cvae.decoder,
        z_dim,
        cvae.condition,
        classifier,
        alpha=alpha,
        likelihood=cvae.likelihood,
        guide=guide_family(guide),
        guide_kwargs=guide_kwargs,
        x_dim=cvae.x_dim,
        name=name,
    )
    ssvae.config = dict(cvae.config, model="ssvae", num_classes=int(num_classes), alpha=float(alpha))
    ssvae.config.pop("prior")
    return ssvae


def check_m1(m1):
    """Refuse, in one line, settings ``m1`` that cannot be M1: a VAE with prior N(0, I) and a
    guide whose mean is in closed form.

    :raises ValueError: naming what does not fit."""
    kind = m1.get("model", "vae") if isinstance(m1, dict) else m1
    if kind != "vae":
        raise ValueError(f"M1 must be a VAE (model 'vae'), got model {kind!r}")
    if m1.get("prior", "fixed") != "fixed":
        raise ValueError(f"M1 must have the prior N(0, I), got prior {m1['prior']!r}")
    if m1.get("guide", "diagonal") == "flow":
        raise ValueError("M1's features are its guide's means, which a flow guide does not give in closed form")


def build_m1m2(image_shape, m1, model=None, name=None, likelihood="gaussian", **settings):
    """M1+M2 (``model="m1m2"``, :class:`~pyro_vae.models.StackedSemiSupervisedVAE`): the
    semi-supervised VAE M2 (:func:`build_ssvae`, on M1's ``z_dim`` features, Gaussian with a
    learned scale by default) over the fixed feature map of a VAE M1 built from its settings ``m1``.

    :param dict m1: M1's settings (a ``model="vae"`` config with prior N(0, I)); its weights and the
        features' standardization are loaded afterwards (a checkpoint, or
        ``model.features.load_vae(m1_vae).standardize(x_train)``).
    :param settings: M2's settings (``z_dim``, ``hidden_dims``, ``alpha``, …), as :func:`build_ssvae`."""
    _check_kind(model, "m1m2", "build_m1m2")
    check_m1(m1)
    vae = build_vae(**m1)
    if tuple(vae.config["image_shape"]) != tuple(int(s) for s in image_shape):
        raise ValueError(f"M1 models images of shape {vae.config['image_shape']}, not {list(image_shape)}")
    features = FeatureMap(vae.q, vae.decoder, vae.likelihood, vae.z_dim)
    m2 = build_ssvae((1, 1, vae.z_dim), likelihood=likelihood, **settings)
    stacked = StackedSemiSupervisedVAE(features, m2, x_dim=vae.x_dim, name=name)
    stacked.config = dict(m2.config, model="m1m2", image_shape=list(vae.config["image_shape"]), m1=dict(vae.config))
    return stacked


#: The hierarchical VAE's networks: MLPs of gated dense layers (as in the VampPrior paper) or softplus ones.
HVAE_NETWORKS = ("gated", "mlp")


def _trunk(d_in, hidden_dims, network, out_dims):
    """``d_in -> hidden_dims -> heads of out_dims``: gated layers, or linear + softplus."""
    hidden_dims = tuple(int(h) for h in hidden_dims)
    activation = "gated" if network == "gated" else "softplus"
    return MultiHead(hidden_stack((int(d_in),) + hidden_dims, activation), hidden_dims[-1], out_dims)


class _Decoder(torch.nn.Module):
    """``[z1, z2] -> θ``: a hidden stack (with dropout of probability ``dropout`` after each
    hidden layer while training) and a linear output layer of size ``x_dim``."""

    def __init__(self, z_dim, x_dim, hidden_dims, network, dropout=0.0):
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        activation = "gated" if network == "gated" else "softplus"
        self.net = torch.nn.Sequential(
            hidden_stack((int(z_dim),) + hidden_dims, activation, dropout=dropout),
            torch.nn.Linear(hidden_dims[-1], int(x_dim)),
        )
        self.x_dim, self.z_dim = int(x_dim), int(z_dim)

    def forward(self, z):
        return self.net(z)


def build_hvae(
    image_shape,
    z_dim=40,
    z1_dim=None,
    network="gated",
    hidden_dims=(300, 300),
    likelihood="bernoulli",
    guide="diagonal",
    guide1=None,
    scale=None,
    guide_kwargs=None,
    prior=None,
    pseudo_inputs=None,
    dropout=0.0,
    model=None,
    name=None,
):
    """A :class:`~pyro_vae.models.HierarchicalVAE` (``model="hvae"``), two stochastic layers.

    Each of its four networks, q(z2 | x), q(z1 | x, z2), p(z1 | z2) and p(x | z1, z2), is an
    MLP with the hidden widths ``hidden_dims`` on the concatenation of its inputs: gated
    dense layers h = (Wx + b) ⊙ σ(Vx + c) (``network="gated"``, Tomczak & Welling's
    choice, with their sizes 300-300 and d1 = d2 = 40 as defaults) or linear layers with
    softplus (``"mlp"``).

    :param int z_dim: d2, the top layer's size.
    :param int z1_dim: d1, the bottom layer's size (default: ``z_dim``).
    :param guide: the guide family of z2 (and of z1 unless ``guide1`` is given).
    :param guide1: the guide family of z1.
    :param str prior: None or ``"fixed"``, p(z2) = N(0, I); ``"vamp"``, the VampPrior on z2.
    :param float dropout: p of the dropout after each hidden layer of the decoder
        p(x | z1, z2) while training (0: none; evaluation mode never drops). It regularizes
        the decoder, which is where the model overfits static training images. Training
        maximizes the ELBO of a decoder with random masks whose kept units are scaled by
        1/(1 - p) (PyTorch's inverted dropout); evaluation uses the network as stored, each
        layer fed the mean of its masked input.

    Other settings as :func:`build_vae`.
    """
    _check_kind(model, "hvae", "build_hvae")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if network not in HVAE_NETWORKS:
        raise ValueError(
            f"the hierarchical VAE's networks are MLPs: network {network!r} is not supported "
            f"(choose {' or '.join(map(repr, HVAE_NETWORKS))})"
        )
    if not hidden_dims:
        raise ValueError("the hierarchical VAE's networks need at least one hidden layer (hidden_dims)")
    if pseudo_inputs is not None and prior != "vamp":
        raise ValueError(f"pseudo_inputs={pseudo_inputs!r} is the VampPrior's K; pass prior='vamp' to use it")
    image_shape, x_dim, lik = _observation(image_shape, likelihood, scale)
    z2_dim = int(z_dim)
    z1_dim = z2_dim if z1_dim is None else int(z1_dim)
    family2 = guide_family(guide)
    family1 = guide_family(guide if guide1 is None else guide1)
    encoder2 = _trunk(x_dim, hidden_dims, network, family2.encoder_out_dims(z2_dim))
    encoder1 = _trunk(x_dim + z2_dim, hidden_dims, network, family1.encoder_out_dims(z1_dim))
    encoder2.x_dim, encoder1.x_dim = x_dim, x_dim + z2_dim
    prior1 = _trunk(z2_dim, hidden_dims, network, (z1_dim, z1_dim))
    decoder = _Decoder(z1_dim + z2_dim, x_dim, tuple(hidden_dims)[::-1], network, dropout=float(dropout))
    vamp = dict(pseudo_inputs=PSEUDO_INPUTS if pseudo_inputs is None else pseudo_inputs) if prior == "vamp" else {}
    hvae = HierarchicalVAE(
        encoder2,
        encoder1,
        prior1,
        decoder,
        z1_dim,
        z2_dim,
        likelihood=lik,
        guide=family2,
        guide1=family1,
        x_dim=x_dim,
        guide_kwargs=guide_kwargs,
        name=name,
        prior=prior or "fixed",
        **vamp,
    )
    hvae.config = _config(
        "hvae",
        image_shape,
        z2_dim,
        network,
        hidden_dims,
        likelihood,
        guide,
        scale,
        z1_dim=z1_dim,
        guide1=guide1 if guide1 is None or isinstance(guide1, str) else guide1.__name__,
        guide_kwargs=guide_kwargs or {},
        **(dict(prior="vamp", **vamp) if vamp else {}),
        **(dict(dropout=float(dropout)) if dropout else {}),
    )
    return hvae


#: The builder of each model kind a run folder can hold, by ``config["model"]``.
MODEL_BUILDERS = {
    "vae": build_vae,
    "ae": build_autoencoder,
    "cvae": build_cvae,
    "cvae-quadrant": build_cvae_quadrant,
    "hvae": build_hvae,
    "ssvae": build_ssvae,
    "m1m2": build_m1m2,
}


def build_model(config):
    """Rebuild a model from the settings its ``config`` (``run.json``'s ``model``) stores."""
    config = dict(config)
    kind = config.get("model", "vae")
    try:
        builder = MODEL_BUILDERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {kind!r}; choose from {sorted(MODEL_BUILDERS)}") from None
    return builder(**config)
