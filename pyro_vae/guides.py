"""Amortized variational families q(z|x).

A guide family is a :class:`torch.nn.Module` that owns the encoder network and maps a
batch ``x`` (``(batch, x_dim)``) to a Pyro distribution over z with
``batch_shape == (batch,)`` and ``event_shape == (z_dim,)``. The model never sees it:
:meth:`pyro_vae.models.VAE.guide` only does ``pyro.sample("z", family(x))`` inside the
data plate, so swapping the family never touches the model.

Each family says which encoder outputs it needs through :meth:`encoder_out_dims`, so
the same encoder architecture serves all of them.
"""

import functools
import math

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn
from torch.distributions import kl as torch_kl

from .networks import MultiHead, mlp


class NonReparameterizedNormal(dist.Normal):
    """A Normal whose samples carry no reparameterized gradient (``has_rsample`` is
    False), so Pyro's ``TraceGraph_ELBO`` uses the score-function estimator
    ∇φ E_q[f(z)] = E_q[f(z) ∇φ log q_φ(z)] for it."""

    has_rsample = False

    def rsample(self, sample_shape=torch.Size()):
        raise NotImplementedError("NonReparameterizedNormal has no rsample; use sample()")


class DiagonalNormal(nn.Module):
    r"""q(z|x) = N(μ(x), diag σ²(x)), the encoder giving (μ, log σ²).

    z = μ + σ ⊙ ε, ε ~ N(0, I), σ = exp(½ log σ²): a reparameterized sample site.

    :param nn.Module encoder: ``x -> (loc, log_var)``, each ``(batch, z_dim)``.
    :param int z_dim: latent dimension d (every family takes it; unused here).
    :param bool reparameterized: if False, the site is *not* reparameterized
        (:class:`NonReparameterizedNormal`), for the score-function contrast with
        ``TraceGraph_ELBO``.
    :param str baseline: for a non-reparameterized site only: None, ``"decaying"`` or
        ``"neural"``, Pyro's variance-reduction baselines (see :meth:`site_infer`).
    :param float baseline_beta: β of the decaying average, b ← β b + (1 − β) c.
    :param nn.Module baseline_net: for ``baseline="neural"``, ``x -> (batch,)``;
        default a :class:`NeuralBaseline` on the encoder's input size.
    """

    def __init__(self, encoder, z_dim=None, reparameterized=True, baseline=None, baseline_beta=0.9, baseline_net=None):
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim
        self.reparameterized = reparameterized
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose None, 'decaying' or 'neural'")
        if baseline is not None and reparameterized:
            raise ValueError(
                f"baseline={baseline!r} reduces the variance of the score-function estimator, "
                "which only a non-reparameterized site uses: pass reparameterized=False"
            )
        if not 0.0 <= float(baseline_beta) <= 1.0:
            raise ValueError(f"baseline_beta must lie in [0, 1], got {baseline_beta}")
        if baseline_net is not None and baseline != "neural":
            raise ValueError("a baseline_net was given, but baseline is not 'neural'")
        self.baseline = baseline
        self.baseline_beta = float(baseline_beta)
        if baseline == "neural":
            self.baseline_net = baseline_net if baseline_net is not None else NeuralBaseline(_input_dim(encoder))

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim, z_dim)

    def forward(self, x):
        loc, log_var = self.encoder(x)
        scale = torch.exp(0.5 * log_var)
        normal = dist.Normal if self.reparameterized else NonReparameterizedNormal
        return normal(loc, scale).to_event(1)

    def site_infer(self, x, scale=1.0):
        r"""The ``infer`` dict of the site z for a batch ``x``: Pyro's baseline options for
        ``TraceGraph_ELBO``, or None without a baseline (the default, nothing changes).

        ``TraceGraph_ELBO`` estimates the encoder's gradient of the ELBO at a
        non-reparameterized site by Σ_n ∇φ log q(z_n|x_n) · (c_n − b_n), where
        c_n = s [log p(x_n, z_n) − log q(z_n|x_n)] is data point n's downstream cost (s the
        data plate's scale N/B). A baseline b_n that does not depend on z_n leaves the
        estimator unbiased (E_q[∇φ log q] = 0) and lowers its variance when b_n ≈ E[c_n]:

        - ``"decaying"``: b_n is a running average of c_n, b ← β b + (1 − β) c after each
          step (``use_decaying_avg_baseline``). Pyro keeps one average per position in the
          batch, so every batch must have the same size (the
          :class:`~pyro_vae.train.trainer.Trainer` checks this before its first step).
        - ``"neural"``: the decaying average plus s · ``baseline_net(x_n)``, a network of the
          input fitted to what the average leaves by Pyro's baseline loss Σ_n (c_n − b_n)²
          (the NVIL recipe, Mnih & Gregor 2014).

        :param x: the batch ``(batch, x_dim)``.
        :param float scale: s = N/B; the network predicts nats per data point.
        """
        if self.baseline is None:
            return None
        options = {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_beta}
        if self.baseline == "neural":
            options["nn_baseline"] = functools.partial(_scaled, self.baseline_net, float(scale))
            options["nn_baseline_input"] = x
        return {"baseline": options}


#: Baselines of :class:`DiagonalNormal`'s score-function site.
BASELINES = (None, "decaying", "neural")


class NeuralBaseline(nn.Module):
    """b(x): an MLP ``x -> (batch,)``, one number per data point, the input-dependent
    baseline of NVIL. Its last layer starts at zero, so it adds nothing before it learns.

    :param int x_dim: input size D.
    :param int hidden_dim: width of the hidden layer.
    """

    def __init__(self, x_dim, hidden_dim=100):
        super().__init__()
        self.net = mlp((int(x_dim), int(hidden_dim), 1), activation="tanh")
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _scaled(net, scale, x):
    return scale * net(x)


def _input_dim(encoder):
    x_dim = getattr(encoder, "x_dim", None)
    if x_dim is None and getattr(encoder, "image_shape", None) is not None:
        x_dim = math.prod(encoder.image_shape)
    if x_dim is None:
        raise ValueError(
            "baseline='neural' needs the input size, but the encoder has no x_dim or image_shape "
            "attribute: pass baseline_net=(a module x -> (batch,))"
        )
    return x_dim


#: Guide families by name (``full`` and ``flow`` are registered below, where they are defined).
GUIDES = {"diagonal": DiagonalNormal}


def guide_family(name):
    """The guide family class registered under ``name``, or ``name`` itself if it is
    already a class (a user's own family)."""
    if isinstance(name, type):
        return name
    try:
        return GUIDES[name]
    except KeyError:
        raise ValueError(f"unknown guide {name!r}; choose from {sorted(GUIDES)}") from None


class PointMass(nn.Module):
    r"""q(z|x) = δ(z − f(x)): all mass on the encoder's code, the autoencoder's "guide".

    The encoder has one head, ``x -> (loc,)`` with ``loc`` of shape ``(batch, z_dim)``.
    ``dist.Delta`` gives log q(z|x) = 0 at z = f(x) and a reparameterized sample
    z = f(x), so the gradient reaches the encoder through the decoder. It is used by
    :class:`pyro_vae.models.Autoencoder` and deliberately not registered in
    :data:`GUIDES`: paired with a prior it would be a MAP encoder, not a VAE guide.
    """

    def __init__(self, encoder, z_dim=None):
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim,)

    def forward(self, x):
        (loc,) = self.encoder(x)
        return dist.Delta(loc, event_dim=1)


# ---- full-covariance and normalizing-flow families ---------------------------------------
#
# A user's own family plugs in the same way: a ``nn.Module`` built as
# ``Family(encoder, z_dim=d, **guide_kwargs)`` whose static ``encoder_out_dims(z_dim)``
# names the encoder outputs it needs, and whose ``forward(x)`` returns a distribution
# with ``batch_shape == (batch,)`` and ``event_shape == (z_dim,)`` (reparameterized, for
# the pathwise gradient). Pass the class itself (``build_vae(..., guide=MyFamily)``,
# ``VAE(..., guide=MyFamily)``), or register it by name in :data:`GUIDES` to use it from
# the command line (``--guide myname``). ``examples/guides.py`` writes one.


def _check_outputs(outputs, sizes, family):
    """Raise a ValueError naming the family if the encoder's outputs do not have the
    sizes ``family.encoder_out_dims`` asked for."""
    got = tuple(int(o.shape[-1]) for o in outputs)
    if got != tuple(sizes):
        raise ValueError(
            f"the {family} guide needs encoder outputs of sizes {tuple(sizes)}, got {got}; build "
            f"the encoder with out_dims={family}.encoder_out_dims(z_dim)"
        )


def _zero_head_rows(encoder, start, stop):
    """Zero the rows ``start:stop`` of a :class:`~pyro_vae.networks.MultiHead`'s output
    layer, so those outputs start at 0 (other encoders are left as they are)."""
    head = getattr(encoder, "head", None)
    if isinstance(encoder, MultiHead) and isinstance(head, nn.Linear) and head.out_features >= stop:
        with torch.no_grad():
            head.weight[start:stop].zero_()
            head.bias[start:stop].zero_()


def tril_from_outputs(log_var, off_diagonal):
    r"""The lower-triangular Cholesky factor L of a covariance Σ = L Lᵀ from unconstrained
    encoder outputs:

        L_jj = exp(½ ρ_j),   L_ij = a_k for i > j (row-major order of the strictly-lower part),

    so that L has a positive diagonal (Σ is positive definite) and, with a = 0, Σ =
    diag exp(ρ), the diagonal family's covariance.

    :param log_var: ρ, ``(*batch, d)``.
    :param off_diagonal: a, ``(*batch, d(d−1)/2)``.
    :returns: L, ``(*batch, d, d)``.
    """
    d = log_var.shape[-1]
    if off_diagonal.shape[-1] != d * (d - 1) // 2:
        raise ValueError(
            f"a {d}×{d} Cholesky factor has {d * (d - 1) // 2} strictly-lower entries, got {off_diagonal.shape[-1]}"
        )
    rows, cols = torch.tril_indices(d, d, offset=-1, device=log_var.device)
    tril = log_var.new_zeros(log_var.shape + (d,))
    tril[..., rows, cols] = off_diagonal
    return tril + torch.diag_embed(torch.exp(0.5 * log_var))


class FullCovarianceNormal(nn.Module):
    r"""q(z|x) = N(μ(x), L(x) L(x)ᵀ), a Gaussian with a full covariance in its Cholesky
    parameterization (:func:`tril_from_outputs`); the encoder gives (μ, ρ, a):

        z = μ + L ε,   ε ~ N(0, I_d),   log q(z|x) = log N(ε; 0, I) − Σ_j log L_jj,

    a reparameterized sample site (Pyro's ``MultivariateNormal(loc, scale_tril=L)``).

    :param nn.Module encoder: ``x -> (loc, log_var, off_diagonal)`` of sizes
        :meth:`encoder_out_dims` ``= (d, d, d(d−1)/2)``.
    :param int z_dim: latent dimension d.
    :param bool init_diagonal: start the off-diagonal outputs at zero (if the encoder is a
        :class:`~pyro_vae.networks.MultiHead`), so the family starts as the diagonal one.

    ``TraceMeanField_ELBO`` applies: KL(N(μ, LLᵀ) ‖ N(m, diag s²)) is registered in
    closed form (:func:`kl_mvn_diagonal_normal`).
    """

    def __init__(self, encoder, z_dim=None, init_diagonal=True):
        super().__init__()
        if z_dim is None or int(z_dim) < 1:
            raise ValueError(f"the full-covariance guide needs z_dim, a positive integer, got {z_dim!r}")
        self.encoder = encoder
        self.z_dim = int(z_dim)
        if init_diagonal:
            _zero_head_rows(encoder, 2 * self.z_dim, 2 * self.z_dim + self.z_dim * (self.z_dim - 1) // 2)

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim, z_dim, z_dim * (z_dim - 1) // 2)

    def scale_tril(self, x):
        """(μ, L) for a batch ``x``: ``(batch, d)`` and ``(batch, d, d)``."""
        outputs = self.encoder(x)
        _check_outputs(outputs, self.encoder_out_dims(self.z_dim), "FullCovarianceNormal")
        loc, log_var, off = outputs
        return loc, tril_from_outputs(log_var, off)

    def forward(self, x):
        loc, tril = self.scale_tril(x)
        return dist.MultivariateNormal(loc, scale_tril=tril)


@torch_kl.register_kl(torch.distributions.MultivariateNormal, torch.distributions.Independent)
def kl_mvn_diagonal_normal(p, q):
    r"""KL(N(μ, L Lᵀ) ‖ N(m, diag s²)) in closed form, for q a Normal made an event of
    one dimension (``Normal(m, s).to_event(1)``, the VAE's prior):

        KL = ½ [ Σ_ij L_ij² / s_i² + Σ_i (μ_i − m_i)² / s_i² − d + 2 Σ_i log s_i − 2 Σ_j log L_jj ].

    Registered with ``torch.distributions.kl.register_kl``, so Pyro's
    ``TraceMeanField_ELBO`` uses it for the ``full`` guide; any other ``Independent``
    raises ``NotImplementedError`` (Pyro then falls back to a Monte Carlo estimate).
    """
    base = q.base_dist
    if q.reinterpreted_batch_ndims != 1 or not isinstance(base, torch.distributions.Normal):
        raise NotImplementedError
    m, s = base.loc, base.scale
    tril = p.scale_tril
    d = tril.shape[-1]
    trace = (tril / s.unsqueeze(-1)).pow(2).sum((-2, -1))
    maha = ((p.loc - m) / s).pow(2).sum(-1)
    log_det = 2 * s.log().sum(-1) - 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + maha - d + log_det)


class FlowDistribution(dist.TransformedDistribution):
    r"""A normalizing flow z = T_K ∘ … ∘ T_1(z₀), z₀ ~ base, with (Theorem 1.3)

        log q(z) = log q₀(z₀) − Σ_k log |det ∂T_k / ∂z_{k−1}|,

    Pyro's ``TransformedDistribution``. Its :attr:`mean` has no closed form, so it is the
    average of :attr:`num_mean_samples` draws (no gradient), with Monte Carlo error about
    σ/√n per coordinate.
    """

    num_mean_samples = 256

    @property
    def mean(self):
        with torch.no_grad():
            return self.sample((self.num_mean_samples,)).mean(0)


class NormalizingFlow(nn.Module):
    r"""q(z|x): a diagonal Normal base conditioned on x, followed by K conditional
    inverse autoregressive flows (Kingma et al. 2016) whose context is an encoder output h(x):

        z₀ = μ(x) + σ(x) ⊙ ε,  ε ~ N(0, I),
        z_k = m_k(z_{k−1}, h) + exp(s_k(z_{k−1}, h)) ⊙ z_{k−1},   k = 1..K,

    m_k and s_k autoregressive in z_{k−1} (a MADE network, Pyro's
    ``conditional_affine_autoregressive``), the order of the coordinates reversed between
    flows (and once more at the end for an even K, :meth:`transforms`). ∂z_k/∂z_{k−1} is triangular, so

        log q(z_K|x) = log N(z₀; μ, diag σ²) − Σ_k Σ_j s_kj(z_{k−1}, h),

    a reparameterized sample site (a :class:`FlowDistribution`, built as Pyro's
    ``ConditionalTransformedDistribution(base, transforms).condition(h)``). No KL is in
    closed form: ``TraceMeanField_ELBO`` falls back to the Monte Carlo term.

    :param nn.Module encoder: ``x -> (loc, log_var, context)`` of sizes
        :meth:`encoder_out_dims` ``= (d, d, context_dim)``.
    :param int z_dim: latent dimension d.
    :param int num_flows: K ≥ 1.
    :param hidden_dims: hidden sizes of each MADE network (default ``(max(4 d, 32),)``).
    :param bool init_identity: start every flow at the identity (the last layers of the
        MADE networks at zero, so m = 0 and s = 0): the family starts as the diagonal one.
    """

    #: size of the context h(x); a subclass may change it.
    context_dim = 64

    def __init__(self, encoder, z_dim=None, num_flows=2, hidden_dims=None, init_identity=True):
        super().__init__()
        if z_dim is None or int(z_dim) < 1:
            raise ValueError(f"the flow guide needs z_dim, a positive integer, got {z_dim!r}")
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows!r}")
        self.encoder = encoder
        self.z_dim = d = int(z_dim)
        hidden_dims = [int(h) for h in (hidden_dims or (max(4 * d, 32),))]
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(d, self.context_dim, hidden_dims=hidden_dims) for _ in range(num_flows)
        )
        if init_identity:
            for flow in self.flows:
                last = flow.nn.layers[-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        self._reverse = T.Permute(torch.arange(d - 1, -1, -1))

    @classmethod
    def encoder_out_dims(cls, z_dim):
        return (z_dim, z_dim, cls.context_dim)

    def transforms(self):
        """[T_1, reverse, T_2, reverse, …, T_K]: the conditional flows with a reversal of
        the coordinates between them, and one more reversal at the end when K is even, so
        that the coordinates come out in their own order (identity flows give the base).

        Each reversal is a transform of its own: every transform keeps the last (input,
        output) pair it saw (``cache_size=1``), and ``log_prob`` of a sample then walks back
        through those pairs instead of inverting the autoregressive flows (d sequential
        passes each). One shared reversal would keep only its last pair."""
        out = []
        for k, flow in enumerate(self.flows):
            if k:
                out.append(T.Permute(self._reverse.permutation))
            out.append(flow)
        if len(self.flows) % 2 == 0:
            out.append(T.Permute(self._reverse.permutation))
        return out

    def forward(self, x):
        outputs = self.encoder(x)
        _check_outputs(outputs, self.encoder_out_dims(self.z_dim), type(self).__name__)
        loc, log_var, context = outputs
        self._reverse.permutation = self._reverse.permutation.to(loc.device)
        base = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        q = dist.ConditionalTransformedDistribution(base, self.transforms()).condition(context)
        return FlowDistribution(q.base_dist, q.transforms)


GUIDES["full"] = FullCovarianceNormal
GUIDES["flow"] = NormalizingFlow
