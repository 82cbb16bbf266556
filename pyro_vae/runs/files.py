"""The files of a run folder, written so that nothing already written is lost and read
without executing pickled code.

A run folder holds ``run.json`` (settings and history, plain JSON; its schema is
:mod:`pyro_vae.runs.schema`) and ``checkpoint.pt`` (tensors only). Every write goes to a
temporary file in the same folder and is moved into place with :func:`os.replace`, so a
kill during a save leaves the previous file intact (:func:`atomic_write`). Checkpoints are
read with ``torch.load(weights_only=True)``: nothing pickled is executed, and a file that
holds anything but tensors and plain containers is refused. What is read back is checked
before it is used: a checkpoint that is not a dict, lacks the model's weights or holds NaN
or inf weights is a one-line :class:`CheckpointError` naming the file and the entry.
Temporary files carry their writer's PID, and a writer removes only its own (or those of
processes that no longer exist).
"""

import contextlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch

from ..config import kind_of

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unsafe, corrupt, or does not fit the model."""


def file_mode():
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
            pid = tmp.name[len(name) + 2 :].split(".", 1)[0]
            # a name without a PID is from a version before PIDs were written: removed
            if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)


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
        os.fchmod(fd, file_mode())
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


def read_json(path):
    """Read a JSON file.

    :raises CheckpointError: a one-line message naming the file, if it is missing or not
        valid JSON (:func:`pyro_vae.runs.schema.read_run` reads and checks a ``run.json``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is this a pyro-vae run folder?")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    return obj


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
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors "
                f"(loading it would execute pickled code): {msg}"
            ) from None
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
        return {new + k[len(old) :] if isinstance(k, str) and k.startswith(old) else k: v for k, v in weights.items()}

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
        if not isinstance(weights, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()
        ):
            raise CheckpointError(f'{path}: its "model" entry is not a dict of named tensors')
        bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(
                f"{path} holds NaN or inf weights ({len(bad)} of {len(weights)} tensors, "
                f"e.g. {', '.join(bad[:3])}); it cannot be used"
            )
    return state


def load_weights(module, state_dict, what="model"):
    """``module.load_state_dict(state_dict)``, with an error that says what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shapes differ: " + "; ".join(shapes[:5]))
        if missing:
            parts.append("missing from the checkpoint: " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:5]))
        raise CheckpointError(
            f"the checkpoint does not fit this {what} (another architecture or configuration): " + " | ".join(parts)
        )
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
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, {what} {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if _plain(saved.get(k)) != _plain(current.get(k))
    ]
    if diffs:
        raise CheckpointError(
            f"the checkpoint was saved from another configuration than this {what}: " + "; ".join(diffs)
        )


def _plain(value):
    """Tuples and lists compare equal (a configuration read back from JSON has lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
