"""Run folders and checkpoints.

A run folder holds ``run.json`` (configuration and history, plain JSON) and
``checkpoint.pt`` (tensors only). Every write goes to a temporary file in the same
folder and is moved into place with :func:`os.replace`, so a kill during a save leaves
the previous file intact. Checkpoints are read with ``torch.load(weights_only=True)``:
nothing pickled is executed, and a file that holds anything but tensors and plain
containers is refused.

:class:`Checkpointer` saves a :class:`~pyro_vae.training.Trainer`'s whole state
(:meth:`~pyro_vae.training.Trainer.state_dict`: model, optimizer, every RNG state,
epoch, step within the epoch, history) every N steps and at each epoch end, so that
``pyro-vae train --resume RUN_DIR`` continues, mid-epoch too, exactly where the run
was (bit for bit on a CPU).
"""

import json
import os
import tempfile
from pathlib import Path

import torch

from . import distributed as dp

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unsafe, corrupt, or does not fit the model."""


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, and
    move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def load_json(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is this a pyro-vae run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def save_checkpoint(path, state):
    """Save a dict of tensors and plain containers atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint without executing pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        msg = str(e).split("\n")[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors "
                                  f"(loading it would execute pickled code): {msg}") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {msg})") from None


def load_state_dict(module, state_dict, what="model"):
    """``module.load_state_dict(state_dict)``, with an error that says what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:5]))
        if missing:
            parts.append("missing from the checkpoint: " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:5]))
        raise CheckpointError(f"the checkpoint does not fit this {what} (another architecture or "
                              f"configuration): " + " | ".join(parts))
    module.load_state_dict(state_dict)


def check_config(saved, current, what="model"):
    """Compare the settings a checkpoint was saved with (``saved``) to the model's
    (``current``), e.g. ``{"z_dim": 8, "hidden_dims": [128], ...}``.

    :raises CheckpointError: listing every setting that differs, e.g.
        ``z_dim: checkpoint 8, model 4``. Nothing is checked if either is None.
    """
    if saved is None or current is None:
        return
    saved, current = dict(saved), dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, {what} {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if _plain(saved.get(k)) != _plain(current.get(k))]
    if diffs:
        raise CheckpointError(f"the checkpoint was saved from another configuration than this {what}: "
                              + "; ".join(diffs))


def _plain(value):
    """Tuples and lists compare equal (a configuration read back from JSON has lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Checkpointer:
    """Saves a trainer's state into a run folder, every ``every`` steps and at each
    epoch end::

        ckpt = Checkpointer("runs/x", every=100, run={"model": vae.config})
        trainer.run(epochs, callback=ckpt.on_epoch, step_callback=ckpt.on_step)

    Each save writes ``checkpoint.pt`` (:meth:`~pyro_vae.training.Trainer.state_dict`,
    tensors only) and then ``run.json`` (``run`` with the history, epoch and step), each
    atomically (:func:`atomic_write`): a kill at any moment leaves the previous pair or
    the new checkpoint, never a broken file. Parameters that hold NaN or inf are never
    saved (:meth:`~pyro_vae.training.Trainer.check_finite` stops the run instead), so
    the checkpoint on disk is always the last good one; its path is kept in the
    trainer's ``last_checkpoint`` for the error message of a run stopped by a NaN.

    In data-parallel training every rank calls it (the trainer's state gathers the
    RNG states of all ranks); only rank 0 writes.

    :param run_dir: the run folder.
    :param int every: save every ``every`` steps as well (None: at epoch ends only).
    :param dict run: what ``run.json`` holds besides the history (configuration,
        options).
    """

    def __init__(self, run_dir, every=None, run=None):
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"checkpoint every must be a positive number of steps, got {every!r}")
        self.run_dir, self.every, self.run = Path(run_dir), every, dict(run or {})
        self.path = self.run_dir / CHECKPOINT
        self.main = dp.is_main()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # temporary files of a save that a kill interrupted
            for tmp in list(self.run_dir.glob(f".{CHECKPOINT}.*.tmp")) + list(self.run_dir.glob(f".{RUN_JSON}.*.tmp")):
                tmp.unlink(missing_ok=True)

    def on_step(self, trainer):
        """Save if the step count is a multiple of ``every``."""
        if self.every and trainer.step_count % self.every == 0:
            self.save(trainer)

    def on_epoch(self, trainer):
        """Save at an epoch end (after validation)."""
        self.save(trainer)

    def save(self, trainer):
        trainer.check_finite()
        state = trainer.state_dict()
        if self.main:
            save_checkpoint(self.path, state)
            save_json(self.run_dir / RUN_JSON, dict(self.run, history=state["history"], epoch=trainer.epoch,
                                                    step=trainer.step_count))
        where = (f"epoch {trainer.epoch + 1}, batch {trainer.epoch_step}" if trainer.epoch_step
                 else f"end of epoch {trainer.epoch}")
        trainer.last_checkpoint = f"{self.path} (saved after step {trainer.step_count}, {where})"
