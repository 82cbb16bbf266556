"""Training: the :class:`Trainer` and :func:`fit` (:mod:`.trainer`), the run folder's files
(:mod:`.checkpoints`: atomic writes, safe loading, the one-writer lock), the random
state a resume restores (:mod:`.rng`), reading a run folder back (:mod:`.runs`),
and data-parallel training under torchrun (:mod:`.distributed`). The compiled
``Trace_ELBO`` that ``Trainer(traced=True)`` steps with is
:class:`pyro_vae.objectives.CompiledTrace_ELBO`."""

from . import checkpoints, distributed, rng, runs
from .runs import WEIGHTS, load_run
from .trainer import (LR_SCHEDULES, OPTIMIZERS, History, NonFiniteLossError, ScaleLatent, Trainer, evaluate_loss,
                      fit, loss_function, scheduled_lr)

__all__ = ["Trainer", "fit", "evaluate_loss", "loss_function", "History", "NonFiniteLossError", "ScaleLatent",
           "scheduled_lr", "LR_SCHEDULES", "OPTIMIZERS", "load_run", "WEIGHTS", "checkpoints", "distributed", "rng",
           "runs"]
