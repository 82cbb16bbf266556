"""Encoder and decoder networks.

Every network here is a plain :class:`torch.nn.Module`; a user may pass any module
with the same call signature to :class:`~pyro_vae.models.VAE`:

- an **encoder** maps ``x`` of shape ``(batch, x_dim)`` to a tuple of tensors whose
  sizes are given by ``out_dims``; the diagonal guide needs ``(loc, log_var)``, each of
  shape ``(batch, z_dim)``;
- a **decoder** maps ``z`` of shape ``(*batch, z_dim)`` (any number of leading batch
  dimensions, e.g. vectorized particles) to the parameters of p(x|z), of shape
  ``(*batch, x_dim)`` (Bernoulli logits, or Gaussian means).

Data are flat vectors everywhere in the package; the convolutional networks reshape to
``image_shape = (C, H, W)`` themselves.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def _activation(name):
    if isinstance(name, str):
        try:
            return ACTIVATIONS[name]()
        except KeyError:
            raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None
    return name()


class GatedLinear(nn.Module):
    r"""A gated dense layer (Dauphin et al. 2017, as the VampPrior paper uses it):

        h = (W x + b) ⊙ σ(V x + c),

    one linear map for the values and one for the gates, ``(*batch, d_in) -> (*batch, d_out)``.

    :param int d_in: input size.
    :param int d_out: output size.
    """

    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * d_out)

    def forward(self, x):
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def hidden_stack(dims: Sequence[int], activation="softplus", dropout=0.0) -> nn.Sequential:
    """The hidden layers ``dims[0] -> ... -> dims[-1]``, each followed by ``activation``;
    ``activation="gated"`` makes each one a :class:`GatedLinear` instead.

    :param float dropout: p of an :class:`~torch.nn.Dropout` after each layer (0: none): in
        training mode each unit is zeroed with probability p and the rest scaled by 1/(1 - p);
        in evaluation mode the layer is the identity."""
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        if activation == "gated":
            layers.append(GatedLinear(d_in, d_out))
        else:
            layers += [nn.Linear(d_in, d_out), _activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def mlp(dims: Sequence[int], activation="softplus") -> nn.Sequential:
    """A multilayer perceptron ``dims[0] -> ... -> dims[-1]``, with ``activation``
    between layers and none after the last."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


class MultiHead(nn.Module):
    """A trunk ``h = body(x)`` followed by one linear layer whose output is split
    into pieces of sizes ``out_dims``: ``forward(x) -> tuple(pieces)``."""

    def __init__(self, body: nn.Module, hidden_dim: int, out_dims: Sequence[int]):
        super().__init__()
        self.body = body
        self.out_dims = tuple(int(d) for d in out_dims)
        self.head = nn.Linear(hidden_dim, sum(self.out_dims))

    def forward(self, x):
        return self.head(self.body(x)).split(self.out_dims, dim=-1)


class MLPEncoder(MultiHead):
    """Encoder ``x -> (loc, log_var)`` through an MLP (the Kingma & Welling network).

    :param int x_dim: data dimension D.
    :param int z_dim: latent dimension d.
    :param hidden_dims: sizes of the hidden layers, e.g. ``(400,)``.
    :param out_dims: sizes of the outputs; default ``(z_dim, z_dim)`` for
        ``(loc, log_var)``. Guides with more parameters (a Cholesky factor, a flow
        context) ask for more.
    """

    def __init__(self, x_dim, z_dim, hidden_dims=(400,), activation="softplus", out_dims=None):
        hidden_dims = tuple(hidden_dims)
        body = nn.Sequential(mlp((x_dim,) + hidden_dims, activation), _activation(activation))
        super().__init__(body, hidden_dims[-1], out_dims or (z_dim, z_dim))
        self.x_dim, self.z_dim = x_dim, z_dim


class MLPDecoder(nn.Module):
    """Decoder ``z -> θ`` through an MLP; θ has shape ``(*batch, x_dim)``.

    :param int z_dim: latent dimension d.
    :param int x_dim: data dimension D.
    :param hidden_dims: sizes of the hidden layers, in the order they are applied.
    """

    def __init__(self, z_dim, x_dim, hidden_dims=(400,), activation="softplus"):
        super().__init__()
        self.net = mlp((z_dim,) + tuple(hidden_dims) + (x_dim,), activation)
        self.x_dim, self.z_dim = x_dim, z_dim

    def forward(self, z):
        return self.net(z)


class ConvEncoder(MultiHead):
    """Encoder ``x -> (loc, log_var)`` through two stride-2 convolutions.

    :param image_shape: ``(C, H, W)`` of the images; ``x`` arrives flat, ``(batch, C*H*W)``.
    :param int z_dim: latent dimension d.
    """

    def __init__(self, image_shape, z_dim, channels=(32, 64), hidden_dim=256, activation="relu", out_dims=None):
        c, h, w = image_shape
        convs = []
        c_in = c
        for c_out in channels:
            convs += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _activation(activation)]
            c_in = c_out
        convs = nn.Sequential(*convs)
        with torch.no_grad():
            flat = convs(torch.zeros(1, c, h, w)).numel()
        body = nn.Sequential(
            nn.Unflatten(-1, tuple(image_shape)),
            convs,
            nn.Flatten(),
            nn.Linear(flat, hidden_dim),
            _activation(activation),
        )
        super().__init__(body, hidden_dim, out_dims or (z_dim, z_dim))
        self.image_shape, self.z_dim = tuple(image_shape), z_dim


class ConvDecoder(nn.Module):
    """Decoder ``z -> θ`` through a linear layer and two stride-2 transposed
    convolutions; output cropped to ``image_shape`` and flattened to ``(*batch, C*H*W)``."""

    def __init__(self, z_dim, image_shape, channels=(64, 32), hidden_dim=256, activation="relu"):
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.z_dim = tuple(image_shape), z_dim
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        self.fc = nn.Sequential(
            nn.Linear(z_dim, hidden_dim),
            _activation(activation),
            nn.Linear(hidden_dim, channels[0] * self.h0 * self.w0),
            _activation(activation),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels[0], channels[1], 4, stride=2, padding=1),
            _activation(activation),
            nn.ConvTranspose2d(channels[1], c, 4, stride=2, padding=1),
        )
        self.channels0 = channels[0]

    def forward(self, z):
        batch = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, self.channels0, self.h0, self.w0)
        out = self.deconv(h)[..., : self.image_shape[1], : self.image_shape[2]]
        return out.reshape(batch + (-1,))


def make_networks(kind, image_shape, z_dim, hidden_dims=(400,), encoder_out_dims=None):
    """Build a matching ``(encoder, decoder)`` pair by name, ``"mlp"`` or ``"conv"``.

    :param encoder_out_dims: output sizes of the encoder (default ``(z_dim, z_dim)``).
    """
    x_dim = math.prod(image_shape)
    if kind == "mlp":
        hidden_dims = tuple(hidden_dims)
        enc = MLPEncoder(x_dim, z_dim, hidden_dims, out_dims=encoder_out_dims)
        dec = MLPDecoder(z_dim, x_dim, hidden_dims[::-1])
    elif kind == "conv":
        enc = ConvEncoder(image_shape, z_dim, out_dims=encoder_out_dims)
        dec = ConvDecoder(z_dim, image_shape)
    else:
        raise ValueError(f"unknown network kind {kind!r}; choose 'mlp' or 'conv'")
    return enc, dec
