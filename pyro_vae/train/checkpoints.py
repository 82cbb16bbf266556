"""The trainer's side of a run folder: :class:`Checkpointer`, the callback that saves a
:class:`~pyro_vae.train.trainer.Trainer`'s whole state, and :func:`check_trainer_state`,
the check of a state read back before training continues from it.

The files themselves (atomic writes, safe loading, the lock, ``run.json``'s schema) are
:mod:`pyro_vae.runs`'. A trainer's state
(:meth:`~pyro_vae.train.trainer.Trainer.state_dict`: model, optimizer, every RNG state,
epoch, step within the epoch, history) saved every N steps and at each epoch end lets
:func:`pyro_vae.resume` and ``pyro-vae train --resume RUN_DIR`` continue, mid-epoch too,
exactly where the run was (bit for bit on a CPU).
"""

from pathlib import Path

import torch

from ..config import FORMAT, is_int, kind_of
from ..runs.files import (
    CHECKPOINT,
    RUN_JSON,
    CheckpointError,
    check_checkpoint,
    remove_stale_tmp,
    save_checkpoint,
    save_json,
    signals_deferred,
)
from . import distributed as dp

#: The entries of a trainer's state (:meth:`~pyro_vae.train.trainer.Trainer.state_dict`).
TRAINER_STATE = (
    "model",
    "optimizer",
    "epoch",
    "step",
    "epoch_step",
    "epoch_loss",
    "epoch_seconds",
    "generator",
    "rng",
    "history",
)


def check_trainer_state(state, path=CHECKPOINT):
    """Check that a checkpoint holds a whole trainer state that training can continue
    from: every entry of :data:`TRAINER_STATE` with the right types, finite optimizer
    state, and RNG states of the right form (so that restoring them cannot fail half way).

    :raises CheckpointError: one line naming the file and the entry."""
    check_checkpoint(state, path, require=TRAINER_STATE)

    def bad(what):
        return CheckpointError(f"{path}: {what}; the checkpoint is corrupt and cannot be resumed")

    for key in ("epoch", "step", "epoch_step"):
        if not is_int(state[key]) or state[key] < 0:
            raise bad(f"{key} must be an integer ≥ 0, got {kind_of(state[key])}")
    for key in ("epoch_loss", "epoch_seconds"):
        if not isinstance(state[key], (int, float)) or isinstance(state[key], bool):
            raise bad(f"{key} must be a number, got {kind_of(state[key])}")
    opt = state["optimizer"]
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
    ):
        raise bad("its optimizer state is not an optimizer's state dict")
    for slot in opt["state"].values():
        for name, v in slot.items() if isinstance(slot, dict) else ():
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                raise bad(f"its optimizer state holds NaN or inf ({name})")
    ref = torch.Generator().get_state()
    gen = state["generator"]
    if not torch.is_tensor(gen) or gen.dtype != ref.dtype or gen.shape != ref.shape:
        raise bad("its batch generator state is not a torch generator state")
    if not isinstance(state["history"], dict):
        raise bad(f"history must be a dict, got {kind_of(state['history'])}")
    rngs = state["rng"]
    if not isinstance(rngs, list) or not rngs:
        raise bad(f"rng must be a list of RNG states, one per process, got {kind_of(rngs)}")
    torch_ref = torch.get_rng_state()
    for i, r in enumerate(rngs):
        where = f"rng[{i}]"
        if not isinstance(r, dict) or not {"torch", "python", "numpy"} <= set(r):
            raise bad(f"{where} is not an RNG state (torch, python, numpy)")
        t = r["torch"]
        if not torch.is_tensor(t) or t.dtype != torch_ref.dtype or t.shape != torch_ref.shape:
            raise bad(f"{where}.torch is not a torch RNG state")
        py = r["python"]
        if (
            not isinstance(py, dict)
            or not torch.is_tensor(py.get("internal"))
            or py["internal"].numel() != 625
            or not is_int(py.get("version"))
        ):
            raise bad(f"{where}.python is not a Python RNG state")
        npy = r["numpy"]
        if (
            not isinstance(npy, dict)
            or npy.get("name") != "MT19937"
            or not torch.is_tensor(npy.get("keys"))
            or npy["keys"].numel() != 624
            or not is_int(npy.get("pos"))
            or not 0 <= npy["pos"] <= 624
        ):
            raise bad(f"{where}.numpy is not a NumPy RNG state")
        if "cuda" in r and not (torch.is_tensor(r["cuda"]) and r["cuda"].dtype == torch.uint8):
            raise bad(f"{where}.cuda is not a CUDA RNG state")
    return state


class Checkpointer:
    """Saves a trainer's state into a run folder, every ``every`` steps and at each
    epoch end::

        ckpt = Checkpointer("runs/x", every=100, run={"model": vae.config})
        trainer.run(epochs, callback=ckpt.on_epoch, step_callback=ckpt.on_step)

    Each save writes ``checkpoint.pt`` (:meth:`~pyro_vae.train.trainer.Trainer.state_dict`,
    tensors only) and then ``run.json`` (``run`` with the history, epoch and step), each
    atomically (:func:`~pyro_vae.runs.files.atomic_write`), with SIGINT and SIGTERM deferred
    until both are written (:func:`~pyro_vae.runs.files.signals_deferred`): a kill at any
    moment leaves the previous pair or the new checkpoint, never a broken file, and Ctrl-C
    never the one without the other. Parameters that hold NaN or inf are never saved
    (:meth:`~pyro_vae.train.trainer.Trainer.check_finite` stops the run instead), so
    the checkpoint on disk is always the last good one; its path is kept in the
    trainer's ``last_checkpoint`` for the error message of a run stopped by a NaN.

    In data-parallel training every rank calls it (the trainer's state gathers the
    RNG states of all ranks); only rank 0 writes. ``run.json`` carries
    ``"format": FORMAT``. The writer should hold the folder's :class:`~pyro_vae.runs.RunLock`
    (``pyro-vae train`` does).

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
            # temporary files of a save that a kill interrupted: ours, or of processes
            # that no longer exist; another live writer's are left alone
            remove_stale_tmp(self.run_dir)

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
            with signals_deferred():  # the pair is written whole; a signal meanwhile is raised after
                self._write(state, trainer)
        where = (
            f"epoch {trainer.epoch + 1}, batch {trainer.epoch_step}"
            if trainer.epoch_step
            else f"end of epoch {trainer.epoch}"
        )
        trainer.last_checkpoint = f"{self.path} (saved after step {trainer.step_count}, {where})"

    def _write(self, state, trainer):
        """Write ``checkpoint.pt``, then ``run.json`` (rank 0)."""
        save_checkpoint(self.path, state)
        run = dict(self.run, format=FORMAT, history=state["history"], epoch=trainer.epoch, step=trainer.step_count)
        if "best" in state:  # the epoch whose weights load_run(..., weights="best") loads
            run["best"] = dict(epoch=state["best"]["epoch"], valid_loss=state["best"]["valid_loss"])
        try:
            save_json(self.run_dir / RUN_JSON, run)
        except OSError as e:
            raise CheckpointError(f"could not write {self.run_dir / RUN_JSON}: {e.strerror}") from None
