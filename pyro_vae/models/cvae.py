"""The conditional VAE (Sohn et al. 2015): a condition c observed by model and guide.

A condition module maps c (and the image) to h(c), the vector both networks see:
:class:`LabelCondition` (c a class label, h(c) its one-hot code) or
:class:`QuadrantCondition` (c the observed quadrants of an image, x the rest).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from ..data import DataError, one_hot, with_quadrant_masks
from .vae import VAE

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
        h = one_hot(c, self.num_classes, check_values=pyro.poutine.util.is_validation_enabled())
        if x is not None and h.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {h.shape[0]} labels")
        return h.to(x.device if x is not None else h.device)

    def target_mask(self, c):
        """None: every pixel of x is a target."""
        return None

    def prepare(self, data):
        """Check that ``data`` carries labels in range; batches are ``(x, y)``."""
        if data.y is None:
            raise DataError(
                f"{data.name or 'the data'} has no labels; the class-conditional VAE needs labelled "
                "data (digits, mnist10k, mnist, fashion-mnist)"
            )
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


def join_condition(z, h):
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
    :class:`~pyro_vae.train.trainer.Trainer` (``with_labels=True``) serve both.
    """

    def __init__(
        self,
        encoder,
        decoder,
        z_dim,
        condition,
        prior="fixed",
        prior_net=None,
        likelihood="bernoulli",
        guide="diagonal",
        x_dim=None,
        guide_kwargs=None,
        name=None,
    ):
        super().__init__(
            encoder,
            decoder,
            z_dim,
            likelihood=likelihood,
            guide=guide,
            x_dim=x_dim,
            guide_kwargs=guide_kwargs,
            name=name,
        )
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
        px = self.likelihood(self.decoder(join_condition(z, h)))
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
        return self.q(torch.cat([x, self.condition(c, x)], dim=-1))

    def decode(self, z, c, x=None, mean=True):
        """E[x|z,c] (or a draw if not ``mean``) for ``z`` of shape ``(*batch, d)``."""
        theta = self.decoder(join_condition(z, self.condition(c, x)))
        return self.likelihood.mean(theta) if mean else self.likelihood(theta).sample()

    def _labels(self, c, n):
        if not isinstance(self.condition, LabelCondition):
            raise ValueError(
                "sample() draws class-conditional images; for the quadrant CVAE use "
                "complete(x, mask) with the observed pixels"
            )
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
