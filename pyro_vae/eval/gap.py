r"""The amortization gap (Cremer, Li & Duvenaud 2018): what the encoder loses against the
same guide family fitted to each data point alone,

    gap(x_n) = ELBO(q*_n) − ELBO(q_φ(·|x_n)) ≥ 0   (up to optimization and noise),

q*_n the family at encoder outputs optimized for x_n with every other weight fixed.
:class:`FreeOutputs` stands in for the encoder; :func:`copy_with_guide_outputs` gives a
model whose guide sits at chosen outputs.
"""

import copy
from contextlib import contextmanager

import torch
from pyro.infer import Trace_ELBO
from torch import nn
from tqdm.auto import tqdm

from . import likelihood
from .calls import fixed_model


class FreeOutputs(nn.Module):
    """An "encoder" whose outputs are free parameters, one row per data point: it stands in
    for the encoder when the guide family is fitted to each point alone.

    :param outputs: the initial outputs, a tuple of ``(N, size)`` tensors.
    """

    def __init__(self, outputs):
        super().__init__()
        self.values = nn.ParameterList(nn.Parameter(o.detach().clone()) for o in outputs)

    def forward(self, x):
        n = self.values[0].shape[0]
        if x.shape[0] != n:
            raise ValueError(f"these free outputs belong to {n} data points, got a batch of {x.shape[0]}")
        return tuple(self.values)


@contextmanager
def _encoder_replaced(family, encoder):
    saved = family.encoder
    family.encoder = encoder
    try:
        yield
    finally:
        family.encoder = saved


def amortization_gap(
    model,
    x,
    *args,
    steps=300,
    lr=0.02,
    num_particles=8,
    num_eval_samples=1000,
    progress=False,
):
    r"""The amortization gap (Cremer, Li & Duvenaud 2018) for data points ``x``
    (``(N, x_dim)``): how much ELBO the encoder loses against the same guide family fitted
    to each point alone,

        gap(x_n) = ELBO(q*_n) − ELBO(q_φ(·|x_n)) ≥ 0 (up to optimization and noise),

    where q*_n is the family at encoder outputs (μ, log σ², and the Cholesky entries or
    the flow context) optimized for x_n alone, starting from the encoder's, with every
    other weight (decoder, the flow's MADE networks) fixed. The loss is a sum over points
    and Adam is per coordinate, so one run over all points equals N separate fits.

    :param int steps: Adam steps of ``Trace_ELBO`` with ``num_particles`` particles.
    :returns: a dict of ``(N,)`` float64 tensors: ``elbo_amortized``, ``elbo_local``, ``gap``
        (each ELBO the mean of ``num_eval_samples`` draws; ``gap_stderr`` the standard
        error of the difference).
    """
    family = getattr(model, "q", None)
    if family is None or not isinstance(getattr(family, "encoder", None), nn.Module):
        raise ValueError("the amortization gap needs a model whose guide family has an encoder (model.q.encoder)")
    if x.dim() != 2:
        raise ValueError(f"x must be a batch (N, x_dim), got shape {tuple(x.shape)}")
    amortized, amortized_se = likelihood.elbo(model, x, *args, num_samples=num_eval_samples, return_stderr=True)
    captured = []
    handle = family.encoder.register_forward_hook(lambda m, i, o: captured.append(tuple(t.detach() for t in o)))
    try:
        with fixed_model(model), torch.no_grad():
            model.guide(x.to(next(model.parameters()).device), *args)
    finally:
        handle.remove()
    free = FreeOutputs(captured[-1])
    objective = Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,
    )
    optimizer = torch.optim.Adam(free.parameters(), lr=lr)
    with _encoder_replaced(family, free):
        with fixed_model(model):
            free.requires_grad_(True)  # fixed_model froze every parameter of the model, these included
            for _ in tqdm(range(steps), desc="local fits", disable=not progress, leave=False):
                optimizer.zero_grad(set_to_none=True)
                loss = objective.differentiable_loss(model.model, model.guide, x, *args)
                loss.backward()
                optimizer.step()
        local, local_se = likelihood.elbo(model, x, *args, num_samples=num_eval_samples, return_stderr=True)
    return dict(
        elbo_amortized=amortized,
        elbo_local=local,
        gap=local - amortized,
        gap_stderr=(amortized_se**2 + local_se**2).sqrt(),
    )


def copy_with_guide_outputs(model, outputs):
    """A deep copy of ``model`` whose guide ignores the encoder and gives the fixed
    ``outputs`` (a tuple of ``(N, size)`` tensors): the family at chosen parameters."""
    clone = copy.deepcopy(model)
    clone.q.encoder = FreeOutputs(outputs)
    return clone
