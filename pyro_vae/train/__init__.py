"""Training: the :class:`Trainer` and :func:`fit` (:mod:`.trainer`), the checkpoint callback
and the check of a trainer state read back (:mod:`.checkpoints`), the random state a resume
restores (:mod:`.rng`), and data-parallel training under torchrun (:mod:`.distributed`). The
run folder's files, its lock and :func:`pyro_vae.resume` are :mod:`pyro_vae.runs`'. The
compiled ``Trace_ELBO`` that ``Trainer(traced=True)`` steps with is
:class:`pyro_vae.objectives.CompiledTrace_ELBO`."""

from . import checkpoints, distributed, rng
from .trainer import (
    LR_SCHEDULES,
    OPTIMIZERS,
    History,
    NonFiniteLossError,
    ScaleLatent,
    Trainer,
    evaluate_loss,
    final_weights,
    fit,
    loss_function,
    scheduled_lr,
)

__all__ = [
    "Trainer",
    "fit",
    "final_weights",
    "evaluate_loss",
    "loss_function",
    "History",
    "NonFiniteLossError",
    "ScaleLatent",
    "scheduled_lr",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "checkpoints",
    "distributed",
    "rng",
]
