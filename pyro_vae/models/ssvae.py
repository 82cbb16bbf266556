r"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014): a class label y
that is observed where a label is given and summed out where it is not.

Generative model (``model(x, y)``), for each n in the data plate:

    y_n ~ Cat(π),  π = (1/K, …, 1/K)
    z_n ~ N(0, I_d)
    x_n ~ p_θ(x | y_n, z_n) = likelihood(decoder([z_n, e_{y_n}]))

Guide (``guide(x, y)``): y_n ~ q_φ(y | x_n) = Cat(softmax(classifier(x_n))) where y_n is not
given, and z_n ~ q_φ(z | x_n, y_n) = N(μ_φ([x_n, e_{y_n}]), diag σ²_φ([x_n, e_{y_n}])).

The decoder, the encoder over [x, e_y], the one-hot label plumbing and ``sample(c=..., n=...)``
are those of the class-conditional VAE (:class:`~pyro_vae.models.ConditionalVAE` with a
:class:`~pyro_vae.models.LabelCondition`); this model adds the prior on y and the classifier.

Bounds, per data point. Labelled (x, y):

    log p(x, y) ≥ L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) − log q(z|x,y)],

unlabelled x, with y enumerated in parallel (``TraceEnum_ELBO(max_plate_nesting=1)``, the
guide's site y marked ``infer={"enumerate": "parallel"}``), the exact sum over the K classes

    log p(x) ≥ U(x) = Σ_y q(y|x) [L(x, y) − log q(y|x)].

On labelled points the model adds Kingma et al.'s classification term α log q(y|x), an observed
site ``y_aux`` scaled by α (as Pyro's ``ss_vae_M2`` example adds it as an auxiliary loss), so
that q(y|x) also learns from the labels directly; a labelled batch's loss is then
−L(x, y) − α log q(y|x). Evaluation without labels is −U(x), which has no α term.
Batches are either all labelled or all unlabelled (:class:`~pyro_vae.data.semisupervised.SemiSupervisedData`).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import pyro_method
from torch import nn

from ..data import one_hot
from .cvae import ConditionalVAE, join_condition

#: The label value that marks a training point without a label.
UNLABELLED = -1

#: The per-point weight α of the classification term used by default. Pyro's ``ss_vae_M2``
#: example weighs log q(y|x) by 46 per labelled point; 50 is of that order.
ALPHA = 50.0


class SemiSupervisedELBO:
    """The semi-supervised VAE's ELBO: ``TraceEnum_ELBO(max_plate_nesting=1)`` on an
    unlabelled batch (y summed out exactly over its K values), ``Trace_ELBO`` on a labelled
    one, where no site is enumerated and both compute the same estimate (Pyro's
    ``TraceEnum_ELBO`` warns, under validation, when it finds nothing to enumerate).

    Called as Pyro's ELBOs are, ``loss(model, guide, x, y, num_data=N)``; the batch is
    labelled when ``y`` is given and holds no −1.

    :param int num_particles: L, draws of z per data point (and class).
    """

    def __init__(self, num_particles=1):
        kw = dict(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
        self.num_particles = num_particles
        self.enum = TraceEnum_ELBO(**kw)
        self.trace = Trace_ELBO(**kw)

    def _elbo(self, args, kwargs):
        y = args[1] if len(args) > 1 else kwargs.get("y")
        labelled = y is not None and bool((torch.as_tensor(y) != UNLABELLED).all())
        return self.trace if labelled else self.enum

    def loss(self, model, guide, *args, **kwargs):
        """−ELBO of the batch (a float)."""
        return self._elbo(args, kwargs).loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−ELBO of the batch, a tensor to differentiate."""
        return self._elbo(args, kwargs).differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """−ELBO, with its gradients accumulated in the parameters' ``.grad``."""
        return self._elbo(args, kwargs).loss_and_grads(model, guide, *args, **kwargs)


def ssvae_objective(name="elbo", num_particles=1):
    """The objective of the semi-supervised VAE, :class:`SemiSupervisedELBO`, which sums
    the unlabelled y out exactly. Other objectives refuse in one line.

    :param str name: ``"elbo"`` (or ``"Trace_ELBO"``, ``"TraceEnum_ELBO"``).
    :param int num_particles: L, draws of z per data point and class.
    """
    if name not in ("elbo", "Trace_ELBO", "trace", "TraceEnum_ELBO"):
        raise ValueError(
            f"--objective {name} does not apply to the semi-supervised VAE: its unlabelled y is "
            "enumerated, which only TraceEnum_ELBO (--objective elbo) sums exactly"
        )
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
    return SemiSupervisedELBO(num_particles)


class Classifier(nn.Module):
    """q(y|x)'s network: an MLP ``x -> hidden (softplus) -> K logits``.

    :param int x_dim: D.
    :param int num_classes: K.
    :param hidden_dims: hidden widths.
    """

    def __init__(self, x_dim, num_classes=10, hidden_dims=(400,)):
        super().__init__()
        dims = (int(x_dim),) + tuple(int(h) for h in hidden_dims)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.Softplus()]
        layers.append(nn.Linear(dims[-1], int(num_classes)))
        self.net = nn.Sequential(*layers)
        self.x_dim, self.num_classes = int(x_dim), int(num_classes)

    def forward(self, x):
        """Logits of q(y|x), ``(batch, K)``."""
        return self.net(x)


class SemiSupervisedVAE(ConditionalVAE):
    r"""M2: y ~ Cat(1/K), z ~ N(0, I), x ~ p(x|y, z); guide q(y|x) (``classifier``) and
    q(z|x, y). See the module's docstring for the bounds.

    :param nn.Module encoder: ``[x, e_y] -> (loc, log_var)``, input size D + K.
    :param nn.Module decoder: ``[z, e_y] -> θ``, input size d + K.
    :param int z_dim: d.
    :param condition: a :class:`~pyro_vae.models.LabelCondition` (K classes).
    :param nn.Module classifier: ``x -> logits`` of q(y|x), ``(batch, K)``.
    :param float alpha: α ≥ 0, the weight per labelled point of log q(y|x) in the training loss.

    Other parameters (likelihood, guide family, ``x_dim``, ``name``) as
    :class:`~pyro_vae.models.ConditionalVAE`; the prior on z is N(0, I).
    """

    def __init__(
        self,
        encoder,
        decoder,
        z_dim,
        condition,
        classifier,
        alpha=ALPHA,
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
            condition,
            prior="fixed",
            likelihood=likelihood,
            guide=guide,
            x_dim=x_dim,
            guide_kwargs=guide_kwargs,
            name=name,
        )
        if not (float(alpha) >= 0):
            raise ValueError(f"alpha, the classification term's weight, must be ≥ 0, got {alpha!r}")
        self.classifier = classifier
        self.alpha = float(alpha)

    @property
    def num_classes(self):
        return self.condition.num_classes

    def _split_labels(self, y, x):
        """``y`` as the model's site takes it: None (every point unlabelled: y is summed out)
        or a ``(batch,)`` label tensor; a batch mixing labelled and unlabelled points is refused."""
        if y is None:
            return None
        y = torch.as_tensor(y, device=x.device if x is not None else None)
        if y.dim() != 1 or (x is not None and y.shape[0] != x.shape[0]):
            raise ValueError(
                f"labels must have shape (batch,) = ({x.shape[0] if x is not None else 'batch'},), got {tuple(y.shape)}"
            )
        unlabelled = y == UNLABELLED
        if unlabelled.all():
            return None
        if unlabelled.any():
            raise ValueError(
                f"a batch of the semi-supervised VAE is all labelled or all unlabelled (label "
                f"{UNLABELLED}); this one mixes {int((~unlabelled).sum())} labelled and "
                f"{int(unlabelled.sum())} unlabelled points"
            )
        return y

    def _features(self, y):
        """e_y, ``y.shape + (K,)``, for labels of any shape (enumerated values ``(K, 1)`` too)."""
        check = pyro.poutine.util.is_validation_enabled()
        return (
            one_hot(y.reshape(-1), self.num_classes, check_values=check)
            .reshape(y.shape + (self.num_classes,))
            .to(self._zero.dtype)
        )

    def label_prior(self, batch_size):
        """p(y) = Cat(1/K), batch shape ``(batch_size,)``."""
        return dist.Categorical(logits=self._zero.new_zeros(batch_size, self.num_classes))

    # ---- the Pyro program ----------------------------------------------------------------
    @pyro_method
    def model(self, x=None, y=None, num_data=None, batch_size=None):
        """p(x, y, z) = p(y) p(z) p(x|y,z) for a batch, y observed where given.

        :param x: data ``(batch, D)``, or None to sample x.
        :param y: labels ``(batch,)``, all in 0..K−1 (observed), or None / all −1 (unlabelled).
        :param int num_data: N, if the batch stands for a data set of N points (scale N/B).
        :param int batch_size: the batch size when ``x`` and ``y`` are None.
        """
        y = self._split_labels(y, x)
        if x is not None:
            self._check_x(x)
            batch_size = x.shape[0]
        elif y is not None:
            batch_size = y.shape[0]
        else:
            batch_size = self._batch_size(None, batch_size)
        decoder, likelihood, classifier = self.decoder, self.likelihood, self.classifier  # pyro.module statements
        with self.plate(batch_size, num_data, device=self._zero.device):
            y_site = pyro.sample("y", self.label_prior(batch_size), obs=y)
            z = pyro.sample("z", self.prior((batch_size,)))
            h = self._features(y_site)
            x_site = pyro.sample("x", likelihood(decoder(join_condition(z, h))), obs=x)
            if y is not None and x is not None and self.alpha > 0:
                with poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.Categorical(logits=classifier(x)), obs=y)
            return x_site

    @pyro_method
    def guide(self, x=None, y=None, num_data=None, batch_size=None):
        """q(y|x) (where y is not given, enumerated in parallel) and q(z|x, y)."""
        if x is None:
            raise ValueError("the guide q(y|x) q(z|x,y) needs the data x, a tensor of shape (batch, x_dim)")
        self._check_x(x)
        y = self._split_labels(y, x)
        q, classifier = self.q, self.classifier
        with self.plate(x.shape[0], num_data, device=x.device):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=classifier(x)), infer={"enumerate": "parallel"})
            h = self._features(y)
            shape = torch.broadcast_shapes(h.shape[:-1], x.shape[:-1])
            inputs = torch.cat([x.expand(shape + x.shape[-1:]), h.expand(shape + h.shape[-1:])], dim=-1)
            return pyro.sample("z", q(inputs))

    def prepare_data(self, data):
        """``data`` as the trainer passes it, ``(x, y)`` batches: a
        :class:`~pyro_vae.data.semisupervised.SemiSupervisedData` as it is; other data
        with labels are checked (labels in 0..K−1, or −1 for unlabelled)."""
        if data.y is None:
            return data
        y = data.y
        labelled = y != UNLABELLED
        one_hot(y[labelled], self.num_classes)  # raises on labels out of range
        return data

    # ---- inference and generation --------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, x):
        """q(y|x), ``(batch, K)``."""
        self._check_x(x)
        return torch.softmax(self.classifier(x), dim=-1)

    @torch.no_grad()
    def classify(self, x):
        """argmax_y q(y|x), ``(batch,)`` int64."""
        return self.predict_proba(x).argmax(dim=-1)
