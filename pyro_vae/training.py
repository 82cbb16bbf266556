"""Stochastic variational inference for a model/guide pair.

:class:`Trainer` runs SVI epochs over minibatches. Each step computes the objective's
differentiable loss −ELBO(x_batch) (scaled to the data set by the model's plate) from
``vae.model`` and ``vae.guide`` with Pyro's own ELBO classes, and steps a
``torch.optim`` optimizer over ``vae.parameters()``. This is the route Pyro documents
for custom training loops (``elbo.differentiable_loss`` + a PyTorch optimizer); it gives
the same gradients as ``pyro.infer.SVI`` with ``pyro.optim.Adam`` without the param
store's per-parameter optimizers, which is most of Pyro's per-step overhead.

Losses are reported in nats per data point: the scaled minibatch loss divided by N.
"""

import math
import time
from dataclasses import asdict, dataclass, field

import pyro
import torch
from tqdm.auto import tqdm

from .objectives import make_objective

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stopped before any parameter was changed by it."""


@dataclass
class History:
    """Per-epoch records: train −ELBO (mean over the epoch's steps), validation −ELBO
    (whole validation set, after the epoch), both in nats per data point, and seconds."""

    train_loss: list = field(default_factory=list)
    valid_loss: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def _loss_fn(objective):
    """``f(model, guide, x) -> loss`` that leaves gradients to be computed by the caller
    (``differentiable_loss``), or, for objectives that only offer ``loss_and_grads``
    (e.g. ``TraceGraph_ELBO``), a function that computes them itself."""
    if hasattr(objective, "differentiable_loss"):
        return objective.differentiable_loss, True
    return objective.loss_and_grads, False


def private_param_store():
    """A context in which ``pyro.module``/``pyro.param`` register into a fresh param
    store, restored afterwards: training one model never touches (or is touched by)
    the parameters another model left in Pyro's global store under the same names."""
    return pyro.get_param_store().scope()


@torch.no_grad()
def evaluate_loss(vae, data, objective="elbo", batch_size=1000, num_particles=1, with_labels=False):
    """−ELBO (or the objective's loss) averaged over every point of ``data``, in nats
    per data point; batches are not rescaled (``num_data`` is set to each batch's size).

    :param vae: a model with ``model``/``guide`` methods and a ``num_data`` attribute.
    :param data: :class:`~pyro_vae.data.ImageData`.
    :param bool with_labels: pass ``(x, y)`` to model and guide (conditional models).
    """
    if isinstance(objective, str):
        objective = make_objective(objective, num_particles)
    saved, vae.num_data = vae.num_data, None
    try:
        total, count = 0.0, 0
        with private_param_store():
            for batch in _batches(data, batch_size, shuffle=False, with_labels=with_labels):
                total += float(objective.loss(vae.model, vae.guide, *batch))
                count += batch[0].shape[0]
    finally:
        vae.num_data = saved
    return total / count


def _batches(data, batch_size, shuffle=True, generator=None, with_labels=False):
    for xb, yb in data.batches(batch_size, shuffle=shuffle, generator=generator):
        yield (xb, yb) if with_labels else (xb,)


class Trainer:
    """SVI on ``vae.model``/``vae.guide`` over an :class:`~pyro_vae.data.ImageData` set.

    :param vae: a :class:`~pyro_vae.models.VAE` (or any module with ``model``, ``guide``,
        ``num_data`` and ``likelihood``).
    :param train: training data; ``vae.num_data`` is set to its size.
    :param valid: validation data or None.
    :param objective: a name (:func:`~pyro_vae.objectives.make_objective`) or an ELBO object.
    :param int num_particles: L, particles per data point.
    :param str optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"``.
    :param float lr: learning rate.
    :param int batch_size: B.
    :param int seed: seeds Pyro, PyTorch and the batch order.
    :param device: ``"cpu"``, ``"cuda"``, ...
    :param float clip_norm: clip the gradient's global norm to this value (None: off).
    :param bool with_labels: pass the labels to model and guide (conditional models).
    """

    def __init__(self, vae, train, valid=None, objective="elbo", num_particles=1, optimizer="adam",
                 lr=1e-3, batch_size=128, seed=0, device="cpu", clip_norm=None, with_labels=False,
                 valid_batch_size=1000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for, but no CUDA GPU is available")
        pyro.set_rng_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.vae = vae.to(self.device)
        self.train_data = train.to(self.device)
        self.valid_data = valid.to(self.device) if valid is not None else None
        if train.binarize != "dynamic":
            _check(vae, train)
        if valid is not None:
            _check(vae, valid)
        self.vae.num_data = len(train)
        self.objective = make_objective(objective, num_particles) if isinstance(objective, str) else objective
        self.loss_fn, self.differentiable = _loss_fn(self.objective)
        try:
            opt_cls = OPTIMIZERS[optimizer]
        except KeyError:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}") from None
        self.optimizer = opt_cls(self.vae.parameters(), lr=lr)
        self.batch_size, self.clip_norm, self.with_labels = batch_size, clip_norm, with_labels
        self.valid_batch_size = valid_batch_size
        self.history = History()
        self.epoch = 0
        self.step_count = 0

    def step(self, *batch):
        """One SVI step on a minibatch; returns −ELBO in nats per data point."""
        n = self.vae.num_data
        self.optimizer.zero_grad(set_to_none=True)
        if self.differentiable:
            loss = self.loss_fn(self.vae.model, self.vae.guide, *batch) / n
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at step {self.step_count + 1}")
            loss.backward()
            value = loss.item()
        else:
            value = self.loss_fn(self.vae.model, self.vae.guide, *batch) / n
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at step {self.step_count + 1}")
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.clip_norm)
        self.optimizer.step()
        self.step_count += 1
        return value

    def train_epoch(self):
        """One pass over the training data; returns the mean −ELBO of its steps."""
        self.vae.train()
        total, steps = 0.0, 0
        with private_param_store():
            for batch in _batches(self.train_data, self.batch_size, True, self.generator, self.with_labels):
                total += self.step(*batch)
                steps += 1
        return total / steps

    def validate(self):
        self.vae.eval()
        loss = evaluate_loss(self.vae, self.valid_data, self.objective, self.valid_batch_size,
                             with_labels=self.with_labels)
        self.vae.train()
        return loss

    def run(self, epochs, progress=True, callback=None):
        """Train ``epochs`` more epochs. ``callback(trainer)`` runs after each epoch."""
        bar = tqdm(range(epochs), desc="epochs", disable=not progress, leave=False)
        for _ in bar:
            t0 = time.perf_counter()
            train_loss = self.train_epoch()
            seconds = time.perf_counter() - t0
            self.epoch += 1
            self.history.train_loss.append(train_loss)
            self.history.epoch_seconds.append(seconds)
            if self.valid_data is not None:
                self.history.valid_loss.append(self.validate())
            bar.set_postfix(train=f"{train_loss:.2f}",
                            valid=f"{self.history.valid_loss[-1]:.2f}" if self.history.valid_loss else "-")
            if callback is not None:
                callback(self)
        return self.history


def _check(vae, data):
    try:
        vae.likelihood.check(data.x)
    except ValueError as e:
        raise ValueError(f"{data.name}: {e}") from None


def fit(vae, train, valid=None, epochs=10, progress=True, callback=None, **kwargs):
    """Train ``vae`` with SVI and return its :class:`History`.

    Keyword arguments are those of :class:`Trainer` (objective, num_particles, lr,
    batch_size, seed, device, ...).

    Example::

        train = load_dataset("digits", "train", binarize="dynamic")
        valid = load_dataset("digits", "valid", binarize="static")
        vae = build_vae(train.image_shape, z_dim=8, hidden_dims=(128,))
        history = fit(vae, train, valid, epochs=20, objective="meanfield")
    """
    return Trainer(vae, train, valid, **kwargs).run(epochs, progress=progress, callback=callback)
