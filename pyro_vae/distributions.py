"""Distributions the package's programs sample from: Pyro's own, with faster paths for
the cases a VAE's training step meets at every call.

Every class here is a subclass of the Pyro distribution it stands for, with the same
values, log-densities, gradients with respect to the parameters, and closed-form KL
divergences wherever it can be built; only the work done per call is smaller (the tests
compare them with Pyro's). One difference is by design: :class:`Normal` at its own last
sample has no gradient path through the value apart from its parameters, as torch's
cached transforms.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions.utils import _standard_normal

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Independent(dist.Independent):
    """Pyro's ``Independent`` whose :meth:`expand` returns ``self`` when the batch shape
    already is the one asked for. Pyro's plates (``BroadcastMessenger``) expand every
    sample site's distribution at every call, which otherwise builds two new
    distribution objects per site and step for nothing. With one event dimension,
    :meth:`log_prob` is the base's summed over the last axis."""

    def expand(self, batch_shape, _instance=None):
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)

    def log_prob(self, value):
        if self.reinterpreted_batch_ndims == 1:  # one sum, no reshape
            return self.base_dist.log_prob(value).sum(-1)
        return super().log_prob(value)


class Normal(dist.Normal):
    r"""Pyro's ``Normal`` that keeps the standard normal draw ε behind its last
    reparameterized sample z = μ + σ ε, and evaluates its log-density at that z as

        log q(z) = −½ ε² − log σ − log √(2π)

    instead of −½ ((z − μ)/σ)² − log σ − log √(2π): the same value, and the same
    gradient with respect to μ, σ and everything upstream of them (as a function of the
    parameters, with ε fixed, both are −½ ε² − log σ − log √(2π)), for about half the
    ops. This is the ELBO's −log q(z|x) term at every training step.

    Like torch's transforms with ``cache_size=1`` (the normalizing-flow guides), the
    value is recognized by identity, so the result has no separate gradient path through
    ``value`` itself. It must also be unchanged since the sample: the same autograd node
    (not detached, e.g. by ``detach_``) and the same version counters of z, μ and σ (none
    changed in place). A z without an autograd node (drawn under ``no_grad`` or from
    parameters that need no gradient) is taken only while no gradient can be asked of
    the result, since Pyro's formula then gives the score-function gradient. Every other
    value (a replayed or shifted z, a new tensor) takes Normal's general formula, as does
    every call with ``validate_args``.
    """

    _last = None  # what identifies the last rsample, and its ε (see _fingerprint)

    def _fingerprint(self, z):
        return z.grad_fn, z._version, self.loc._version, self.scale._version

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = _standard_normal(shape, dtype=self.loc.dtype, device=self.loc.device)  # as Normal's
        z = self.loc + eps * self.scale
        # inference-mode tensors have no version counter: nothing is kept for them
        self._last = None if z.is_inference() else (z, self._fingerprint(z), eps)
        return z

    def _is_last_sample(self, value):
        last = self._last
        if last is None or value is not last[0] or self._validate_args or self._fingerprint(value) != last[1]:
            return False
        if value.grad_fn is not None:
            return True  # the reparameterized sample, its graph intact
        # a constant z: Pyro's formula differentiates the parameters with z fixed (or z itself)
        return not (value.requires_grad or torch.is_grad_enabled()
                    and (self.loc.requires_grad or self.scale.requires_grad))

    def log_prob(self, value):
        if not self._is_last_sample(value):
            return super().log_prob(value)
        return self._last[2].square().mul_(-0.5).sub_(_LOG_SQRT_2PI).sub(self.scale.log())


class StandardNormal(dist.Normal):
    """N(0, 1) elementwise, with log p(z) = −½ z² − log √(2π) computed directly rather
    than through Normal's general (z − μ)²/(2σ²) + log σ (two ops instead of seven, and
    as many fewer in backward). Being a ``Normal``, it broadcasts in plates and has
    the closed-form KL divergences of ``Normal``.

    :param loc: zeros of the batch shape; :param scale: ones of the batch shape
        (anything else is refused: the log-density assumes them).
    """

    def __init__(self, loc, scale, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        if not (bool((self.loc == 0).all()) and bool((self.scale == 1).all())):
            raise ValueError("StandardNormal takes loc = 0 and scale = 1 only; use Normal for other values")

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)  # expanded zeros and ones: no check needed

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_p = value.pow(2).mul_(-0.5).sub_(_LOG_SQRT_2PI)
        if log_p.shape[log_p.dim() - len(self.batch_shape):] == self.batch_shape:
            return log_p  # the usual case: value already has the batch shape
        return log_p.expand(torch.broadcast_shapes(value.shape, self.batch_shape))


def _is_functorch(tensor):
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform (no in-place ops then)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _bernoulli_log_prob(logits, value):
    """Σ_i x_i θ_i − softplus(θ_i) over the last axis: softplus, then a fused multiply-add
    in place (out of place under ``torch.func``, where a batched x may hold more than θ)."""
    if _is_functorch(logits) or _is_functorch(value):
        return F.softplus(logits).sub(logits * value).sum(-1).neg()
    return F.softplus(logits).addcmul_(logits, value, value=-1).sum(-1).neg_()


class _BernoulliLogProb(torch.autograd.Function):
    r"""log p(x) = Σ_i x_i θ_i − softplus(θ_i) over the last axis, for x that broadcasts to
    the logits θ and needs no gradient, with its gradient in one expression:

        ∂ log p / ∂θ_i = x_i − σ(θ_i).

    Autograd's own backward of the forward's two ops makes three new tensors the size of
    θ (softplus', the multiply-add's gradient, their sum); this one makes one and works
    in place (sigmoid, subtraction, product). The backward is made of differentiable ops,
    so higher derivatives (``create_graph=True``) work as for Pyro's ``Bernoulli``, and
    ``torch.func`` (``grad``, ``vmap``, forward mode through :meth:`jvp`) works as well.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, value):
        return _bernoulli_log_prob(logits, value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, value = inputs
        ctx.save_for_backward(logits, value)
        ctx.save_for_forward(logits, value)

    @staticmethod
    def backward(ctx, grad):
        logits, value = ctx.saved_tensors
        if torch.is_grad_enabled() or _is_functorch(grad):
            # create_graph=True or torch.func: out of place, the sigmoid's backward needs it
            return (value - torch.sigmoid(logits)) * grad.unsqueeze(-1), None
        return torch.sigmoid(logits).sub_(value).mul_(grad.neg().unsqueeze(-1)), None

    @staticmethod
    def jvp(ctx, logits_tangent, value_tangent):
        logits, value = ctx.saved_tensors
        out = ((value - torch.sigmoid(logits)) * logits_tangent).sum(-1)
        return out if value_tangent is None else out + (logits * value_tangent).sum(-1)  # ∂/∂x = θ


class IndependentBernoulli(Independent):
    r"""``Bernoulli(logits=θ).to_event(1)`` with a faster ``log_prob``:

        log p(x) = Σ_i x_i θ_i − softplus(θ_i),   ∂ log p / ∂θ_i = x_i − σ(θ_i),

    two passes over θ forward (softplus, then a fused multiply-add) instead of the five of
    ``binary_cross_entropy_with_logits`` plus a negation, and three in backward; it
    matters at every training step, and when θ holds K importance samples for every
    data point (:mod:`pyro_vae.evaluation`). Build it as
    ``IndependentBernoulli(dist.Bernoulli(logits=θ), 1)``.
    """

    def log_prob(self, value):
        logits = self.base_dist.logits
        if self.reinterpreted_batch_ndims != 1 or self._validate_args or not (
                value.shape == logits.shape or torch.broadcast_shapes(value.shape, logits.shape) == logits.shape):
            return super().log_prob(value)  # validation, or a value larger than θ: Pyro's general route
        # x broadcasts to θ, e.g. x (B, D) against the logits (K, B, D) of K importance samples
        if value.requires_grad or not logits.requires_grad:
            # no backward of ours is needed (no_grad, evaluation), or one for x too
            return _bernoulli_log_prob(logits, value)
        return _BernoulliLogProb.apply(logits, value.to(logits.dtype))  # bool x too
