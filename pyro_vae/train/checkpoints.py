"""Run folders and checkpoints.

A run folder holds ``run.json`` (configuration and history, plain JSON) and
``checkpoint.pt`` (tensors only). Every write goes to a temporary file in the same
folder and is moved into place with :func:`os.replace`, so a kill during a save leaves
the previous file intact. Checkpoints are read with ``torch.load(weights_only=True)``:
nothing pickled is executed, and a file that holds anything but tensors and plain
containers is refused. What is read back is checked before it is used: a checkpoint
that is not a dict, lacks the model's weights, holds NaN or inf weights or a malformed
trainer state, or a ``run.json`` whose settings have the wrong types, is a one-line
:class:`CheckpointError` naming the file and the entry.

A process that writes a run folder holds its lock (:class:`RunLock`, an advisory
``flock`` on ``.pyro-vae.lock`` inside the folder) for as long as it runs: a second
writer is refused with the holder's PID. The lock of a process that died is released
by the kernel with the process, so the next writer takes the folder over. Temporary
files carry their writer's PID, and a writer removes only its own (or those of
processes that no longer exist).

:class:`Checkpointer` saves a :class:`~pyro_vae.train.trainer.Trainer`'s whole state
(:meth:`~pyro_vae.train.trainer.Trainer.state_dict`: model, optimizer, every RNG state,
epoch, step within the epoch, history) every N steps and at each epoch end, so that
``pyro-vae train --resume RUN_DIR`` continues, mid-epoch too, exactly where the run
was (bit for bit on a CPU).
"""

import contextlib
import errno
import fcntl
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch

from ..config import (FORMAT, ConfigError, DataConfig, ModelConfig, RunRecord, TrainConfig, check_format,
                      is_int, kind_of)
from . import distributed as dp

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"
LOCK = ".pyro-vae.lock"
#: The format of ``run.json`` this version writes (:data:`pyro_vae.config.FORMAT`).
RUN_FORMAT = FORMAT


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unsafe, corrupt, or does not fit the model."""


class RunLockedError(CheckpointError):
    """Another live process holds the run folder's lock."""


def _file_mode():
    """0666 less the process's umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_prefix(name, pid=None):
    return f".{name}.{os.getpid() if pid is None else pid}."


def remove_stale_tmp(folder, names=(CHECKPOINT, RUN_JSON)):
    """Remove the temporary files that this process, or a process that no longer
    exists, left in ``folder`` (a save interrupted by a kill), and those without a PID
    in their name (written before names carried one). Those of live processes are
    theirs and are left alone."""
    folder = Path(folder)
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            pid = tmp.name[len(name) + 2:].split(".", 1)[0]
            # a name without a PID is from a version before PIDs were written: removed
            if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


class RunLock:
    """An advisory lock on a run folder, held by the process that writes it.

    ``RunLock(folder).acquire()`` creates the folder if need be, opens
    ``folder/.pyro-vae.lock`` and takes an exclusive, non-blocking ``flock`` on it,
    then writes its PID there. The kernel releases the lock when the process exits,
    however it exits, so a lock left by a process that died (``kill -9``) is taken
    over by the next writer. :meth:`release` removes the lock file (while still
    holding it) and, with ``remove_created=True``, the folder too if this lock created
    it and it is empty, so that a failed start leaves nothing behind.

    :raises RunLockedError: if another live process holds the lock (naming its PID).
    :raises CheckpointError: if the folder cannot be created or written (naming why).
    """

    def __init__(self, folder, what="run folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK
        self.fd, self.created = None, False

    def acquire(self):
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(f"{folder} is a file, not a folder; choose another {self.what}")
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
                self.created = True
            except FileExistsError:
                if not folder.is_dir():
                    raise CheckpointError(f"{folder} is a file, not a folder; choose another {self.what}") from None
            except OSError as e:
                raise CheckpointError(f"cannot create the {self.what} {folder}: {e.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _file_mode())
            except OSError as e:
                self._remove_created()
                raise CheckpointError(f"cannot write into the {self.what} {folder}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = self._holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise CheckpointError(f"cannot lock the {self.what} {folder}: {e.strerror}") from None
                raise RunLockedError(f"{folder} is being written by another pyro-vae process "
                                     f"({f'PID {holder}' if holder else 'PID unknown'}); wait for it to "
                                     f"finish, or choose another folder") from None
            # the holder before us may have removed the file between our open and flock:
            # then we locked a file nobody else sees; open the path again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise CheckpointError(f"cannot write into the {self.what} {folder}: {e.strerror}") from None
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd):
        try:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _remove_created(self):
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:
                pass
            self.created = False

    @property
    def held(self):
        return self.fd is not None

    def release(self, remove_created=False):
        """Give the lock up (removing its file); with ``remove_created``, also remove
        the folder if this lock created it and nothing else was written there."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if remove_created:
            self._remove_created()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release(remove_created=exc[0] is not None)


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, and
    move it onto ``path`` atomically.

    The temporary file's name carries this process's PID (``.NAME.PID.XXXX.tmp``), so
    that no other process takes it for a leftover of its own; it gets the mode a plain
    ``open()`` would give (0666 less the umask), as the figures do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def signals_deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """Within: ``signals`` are recorded, not acted on, and the first of them is raised
    again (to the handler that was in place) when the block ends, so that a Ctrl-C or
    SIGTERM arriving during a save cannot split ``checkpoint.pt`` from its ``run.json``.
    The deferral is in Python's handlers, not the thread's signal mask: a signal sent to
    the process may be taken by any of its threads (torch's among them), and CPython runs
    its handler in the main thread whichever took it. Outside the main thread nothing
    changes (Python installs handlers there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():  # None: a handler not set from Python
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def load_json(path):
    """Read a JSON file; a ``run.json`` is also checked (:func:`check_run`).

    :raises CheckpointError: a one-line message naming the file, if it is missing, not
        valid JSON, or (``run.json``) not a run's record."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is this a pyro-vae run folder?")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if path.name == RUN_JSON:
        check_run(obj, path)
    return obj


# ---- what run.json and checkpoint.pt must hold ----------------------------------------------
def _builder_keywords(kind):
    """The keywords the builder of model ``kind`` takes (None: any, or unknown here)."""
    import inspect

    try:
        from ..models import MODEL_BUILDERS
    except ImportError:  # no registry to check against: the builder will say
        return None
    builder = MODEL_BUILDERS.get(kind) if isinstance(kind, str) else None
    if builder is None:
        raise KeyError(kind)
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_run(run, path=RUN_JSON):
    """Check what a ``run.json`` holds before anything is built from it: an object,
    in a format this version reads, with a ``model`` object whose settings have the
    right types (:class:`~pyro_vae.config.ModelConfig`) and are all known to the model's
    builder, and ``data``/``train`` entries of the right types
    (:class:`~pyro_vae.config.DataConfig`, :class:`~pyro_vae.config.TrainConfig`).

    :raises CheckpointError: one line naming the file and the entry.
    """
    where = str(path)
    if not isinstance(run, dict):
        raise CheckpointError(f"{where} is not a run's record: it holds {kind_of(run)}, not an object")
    try:
        RunRecord.check(run, where)
        check_format(run, where)
        if "model" not in run:
            raise CheckpointError(f"{where} holds no model settings (no \"model\" entry)")
        model = ModelConfig.check(run["model"], where, "model.")
        for key, config in (("data", DataConfig), ("train", TrainConfig)):
            if key in run:
                config.check(run[key], where, f"{key}.")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    kind = model.get("model", "vae")
    try:
        known = _builder_keywords(kind)
    except KeyError:
        from ..models import MODEL_BUILDERS

        raise CheckpointError(f"{where}: model.model {kind!r} is not a known model kind; choose from "
                              f"{', '.join(sorted(map(str, MODEL_BUILDERS)))}") from None
    if known is not None:
        unknown = sorted(set(model) - known - {"model"})
        if unknown:
            raise CheckpointError(f"{where}: unknown model setting{'s' * (len(unknown) > 1)} "
                                  f"{', '.join(unknown)} (a {kind} takes {', '.join(sorted(known))})")
    for key, value in run.get("history", {}).items():
        if key == "objective" and isinstance(value, str):
            continue
        if not isinstance(value, list) or not all(v is None or isinstance(v, (int, float)) for v in value):
            raise CheckpointError(f"{where}: history.{key} must be a list of numbers, got {kind_of(value)}")
    return run


def save_checkpoint(path, state):
    """Save a dict of tensors and plain containers atomically.

    :raises CheckpointError: if it cannot be written (a full disk, a read-only folder);
        the previous file at ``path`` is then left as it was."""
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1]
        if "file write failed" in str(e) or "No space" in str(e):
            reason = "the disk is full or the file too large (file write failed)"
        kept = " (the previous one is kept)" if Path(path).is_file() else ""
        raise CheckpointError(f"could not write the checkpoint {path}: {reason}{kept}") from None


def load_checkpoint(path, map_location="cpu", require=("model",)):
    """Load a checkpoint without executing pickled code (``weights_only=True``) and
    check it (:func:`check_checkpoint`): a dict holding the entries ``require``
    (the model's weights, finite, by default).

    :raises CheckpointError: a one-line message naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        msg = str(e).split("\n")[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors "
                                  f"(loading it would execute pickled code): {msg}") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {msg})") from None
    return check_checkpoint(upgrade_keys(state), path, require)


#: The weight-name prefixes of formats 0 and 1 and those of format 2, by entry: the guide
#: module was ``posterior``; it is ``q`` (:attr:`pyro_vae.models.vae.VAE.q`).
_RENAMED = {"model": ("posterior.", "q."), "ema": ("module.posterior.", "module.q.")}


def upgrade_keys(state):
    """Rename the weights of a checkpoint written by formats 0 and 1 to format 2's
    names (``posterior.*`` → ``q.*`` in the model's, the best epoch's and the moving
    average's weights); other states are returned as they are."""
    if not isinstance(state, dict):
        return state

    def rename(weights, old, new):
        if not isinstance(weights, dict):
            return weights
        return {new + k[len(old):] if isinstance(k, str) and k.startswith(old) else k: v for k, v in weights.items()}

    for entry, (old, new) in _RENAMED.items():
        if entry in state:
            state[entry] = rename(state[entry], old, new)
    if isinstance(state.get("best"), dict) and "model" in state["best"]:
        state["best"] = dict(state["best"], model=rename(state["best"]["model"], *_RENAMED["model"]))
    return state


def check_checkpoint(state, path=CHECKPOINT, require=("model",)):
    """Check a loaded checkpoint: a dict, holding each entry of ``require``; its
    ``model`` (when present) a dict of tensors that are all finite.

    :raises CheckpointError: one line naming the file and what is wrong."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint: it holds {kind_of(state)}, not a dict")
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint: it lacks {', '.join(map(repr, missing))}")
    if "model" in state:
        weights = state["model"]
        if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                     for k, v in weights.items()):
            raise CheckpointError(f"{path}: its \"model\" entry is not a dict of named tensors")
        bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{path} holds NaN or inf weights ({len(bad)} of {len(weights)} tensors, "
                                  f"e.g. {', '.join(bad[:3])}); it cannot be used")
    return state


#: The entries of a trainer's state (:meth:`~pyro_vae.train.trainer.Trainer.state_dict`).
TRAINER_STATE = ("model", "optimizer", "epoch", "step", "epoch_step", "epoch_loss", "epoch_seconds", "generator",
                 "rng", "history")


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
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(
            opt.get("param_groups"), list):
        raise bad("its optimizer state is not an optimizer's state dict")
    for slot in opt["state"].values():
        for name, v in (slot.items() if isinstance(slot, dict) else ()):
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
        if (not isinstance(py, dict) or not torch.is_tensor(py.get("internal")) or py["internal"].numel() != 625
                or not is_int(py.get("version"))):
            raise bad(f"{where}.python is not a Python RNG state")
        npy = r["numpy"]
        if (not isinstance(npy, dict) or npy.get("name") != "MT19937" or not torch.is_tensor(npy.get("keys"))
                or npy["keys"].numel() != 624 or not is_int(npy.get("pos")) or not 0 <= npy["pos"] <= 624):
            raise bad(f"{where}.numpy is not a NumPy RNG state")
        if "cuda" in r and not (torch.is_tensor(r["cuda"]) and r["cuda"].dtype == torch.uint8):
            raise bad(f"{where}.cuda is not a CUDA RNG state")
    return state


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

    Each save writes ``checkpoint.pt`` (:meth:`~pyro_vae.train.trainer.Trainer.state_dict`,
    tensors only) and then ``run.json`` (``run`` with the history, epoch and step), each
    atomically (:func:`atomic_write`), with SIGINT and SIGTERM deferred until both are
    written (:func:`signals_deferred`): a kill at any moment leaves the previous pair or
    the new checkpoint, never a broken file, and Ctrl-C never the one without the other. Parameters that hold NaN or inf are never
    saved (:meth:`~pyro_vae.train.trainer.Trainer.check_finite` stops the run instead), so
    the checkpoint on disk is always the last good one; its path is kept in the
    trainer's ``last_checkpoint`` for the error message of a run stopped by a NaN.

    In data-parallel training every rank calls it (the trainer's state gathers the
    RNG states of all ranks); only rank 0 writes. ``run.json`` carries
    ``"format": RUN_FORMAT``. The writer should hold the folder's :class:`RunLock`
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
        where = (f"epoch {trainer.epoch + 1}, batch {trainer.epoch_step}" if trainer.epoch_step
                 else f"end of epoch {trainer.epoch}")
        trainer.last_checkpoint = f"{self.path} (saved after step {trainer.step_count}, {where})"

    def _write(self, state, trainer):
        """Write ``checkpoint.pt``, then ``run.json`` (rank 0)."""
        save_checkpoint(self.path, state)
        run = dict(self.run, format=RUN_FORMAT, history=state["history"], epoch=trainer.epoch,
                   step=trainer.step_count)
        if "best" in state:  # the epoch whose weights load_run(..., weights="best") loads
            run["best"] = dict(epoch=state["best"]["epoch"], valid_loss=state["best"]["valid_loss"])
        try:
            save_json(self.run_dir / RUN_JSON, run)
        except OSError as e:
            raise CheckpointError(f"could not write {self.run_dir / RUN_JSON}: {e.strerror}") from None
