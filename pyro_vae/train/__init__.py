"""Training: the :class:`Trainer` and :func:`fit` (:mod:`.trainer`), the run folder's files
(:mod:`.checkpoints`: atomic writes, safe loading, the one-writer lock), the random
state a resume restores (:mod:`.rng`), reading a run folder back (:mod:`.runs`),
data-parallel training under torchrun (:mod:`.distributed`), and the traced, compiled
``Trace_ELBO`` step (:mod:`.traced`)."""

from . import checkpoints, distributed, rng, runs, traced
from .runs import WEIGHTS, load_run
from .traced import TracedELBO, TracingError
from .trainer import (LR_SCHEDULES, OPTIMIZERS, History, NonFiniteLossError, ScaleLatent, Trainer, evaluate_loss,
                      fit, loss_function, scheduled_lr)

__all__ = ["Trainer", "fit", "evaluate_loss", "loss_function", "History", "NonFiniteLossError", "ScaleLatent",
           "scheduled_lr", "LR_SCHEDULES", "OPTIMIZERS", "load_run", "WEIGHTS", "checkpoints", "distributed", "rng",
           "runs", "traced", "TracedELBO", "TracingError"]
