"""What every subcommand shares: the usage error, the run folder's lock, the device check."""

import argparse
import math
from pathlib import Path

import torch

from .. import runs
from ..config import DataConfig
from ..data import load_dataset


class UsageError(ValueError):
    """An invalid command-line option."""


def check_out_dir(out, overwrite):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(p.name != runs.LOCK for p in out.iterdir()):
        if (out / runs.RUN_JSON).exists() or (out / runs.CHECKPOINT).exists():
            if not overwrite:
                raise UsageError(f"{out} already holds a run; pass --overwrite to replace it, or choose another --out")
        elif not overwrite:
            raise UsageError(f"{out} is not empty and holds no run; pass --overwrite to write into it")
    return out


def lock_run_dir(out, overwrite=False, resume=False):
    """Take the run folder's lock (:class:`~pyro_vae.runs.RunLock`), creating the
    folder if need be, and check under the lock that it may be written (the
    ``--overwrite`` check, so that of two processes starting on one fresh folder one
    is refused). A failure removes the folder again if it was created here.

    :returns: the held lock; release it when the run is written.
    :raises UsageError: if the folder cannot be created or written, or holds
        something it may not replace. :raises runs.RunLockedError: if another
        live process writes it (naming its PID)."""
    what = "run folder" if resume else "--out folder"
    lock = runs.RunLock(out, what=what)
    try:
        lock.acquire()
    except runs.RunLockedError:
        raise
    except runs.CheckpointError as e:
        raise UsageError(str(e)) from None
    try:
        if not resume:
            check_out_dir(out, overwrite)
    except BaseException:
        lock.release(remove_created=True)
        raise
    return lock


def check_device(device):
    """``--device``: cpu, or cuda[:N] on a machine with that GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise UsageError(f"--device {device}: pyro-vae runs on cpu or cuda (cuda:N), not on {dev.type}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for, but no CUDA GPU is available")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: there is no GPU {dev.index} (this machine has {torch.cuda.device_count()})"
        )


def run_data(run, split, root=None, limit=None):
    """The ``split`` of the data set a run was trained on, binarized as evaluation sees it
    (:attr:`~pyro_vae.config.DataConfig.eval_binarize`), read from ``root``, else from the
    run's own data folder (``data.root``), else ``$PYRO_VAE_DATA``.

    :param dict run: the run's ``run.json``.
    :param int limit: keep only the first ``limit`` data points.
    :returns: ``(data, DataConfig)``.
    """
    cfg = DataConfig.from_dict(run.get("data", {}))
    data = load_dataset(cfg.dataset, split, root or cfg.root, binarize=cfg.eval_binarize, seed=cfg.seed)
    if limit is not None:
        data.x = data.x[:limit]
        data.y = data.y[:limit] if data.y is not None else None
    return data, cfg


# ---- option types: argparse converts and checks each value as it parses it ---------------------
def number_type(kind, what, ok):
    """An argparse ``type``: ``kind(text)`` (``int`` or ``float``), refused unless ``ok(value)``.
    Also applied to the options a run stores (:mod:`~pyro_vae.cli.resume`), so a boolean,
    or a float where an integer belongs, is refused there as well.

    :param str what: what the value must be, e.g. ``"a positive integer"``.
    """

    def parse(text):
        try:
            if isinstance(text, bool) or (kind is int and isinstance(text, float)):
                raise ValueError(text)
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = number_type(int, "a positive integer", lambda v: v > 0)
nonnegative_int = number_type(int, "an integer ≥ 0", lambda v: v >= 0)
positive_float = number_type(float, "a positive number", lambda v: v > 0 and math.isfinite(v))
nonnegative_float = number_type(float, "a number ≥ 0", lambda v: v >= 0 and math.isfinite(v))
decay = number_type(float, "a decay in (0, 1), e.g. 0.999", lambda v: 0 < v < 1)
probability = number_type(float, "a probability in [0, 1)", lambda v: 0 <= v < 1)


def gaussian_scale(text):
    """An argparse ``type`` for ``--scale``: a positive number, or ``learned``."""
    if text == "learned":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive number or learned, got {text}") from None


def int_at_least(n):
    """An argparse ``type`` for integers ≥ ``n``."""
    return number_type(int, f"an integer ≥ {n}", lambda v: v >= n)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (exit status 2), as every other error
    of ``pyro-vae`` is, with the defaults of every option shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
