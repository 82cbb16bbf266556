"""Run folders: what training writes and what evaluation, plotting and a resume read.

- :mod:`.files`: atomic writes, checkpoints loaded without executing pickled code, the
  check that stored weights fit a model;
- :mod:`.lock`: the one-writer lock of a folder;
- :mod:`.schema`: what ``run.json`` must hold, and the migration of older formats;
- :mod:`.load`: :func:`load_run`, a run's model with the weights asked for;
- :mod:`.resume`: :func:`resume`, and the path from a run's settings to its trainer that
  ``pyro-vae train`` shares.
"""

from .files import CHECKPOINT, RUN_JSON, CheckpointError, atomic_write, load_checkpoint, save_checkpoint, save_json
from .load import WEIGHTS, load_run, run_weights
from .lock import LOCK, RunLock, RunLockedError
from .resume import resume
from .schema import check_run, read_run, upgrade

__all__ = [
    "CHECKPOINT",
    "RUN_JSON",
    "LOCK",
    "CheckpointError",
    "RunLock",
    "RunLockedError",
    "atomic_write",
    "load_checkpoint",
    "save_checkpoint",
    "save_json",
    "check_run",
    "read_run",
    "upgrade",
    "WEIGHTS",
    "load_run",
    "run_weights",
    "resume",
]
