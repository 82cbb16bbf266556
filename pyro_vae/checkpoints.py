"""Run folders and checkpoints.

A run folder holds ``run.json`` (configuration and history, plain JSON) and
``checkpoint.pt`` (tensors only). Every write goes to a temporary file in the same
folder and is moved into place with :func:`os.replace`, so a kill during a save leaves
the previous file intact. Checkpoints are read with ``torch.load(weights_only=True)``:
nothing pickled is executed, and a file that holds anything but tensors and plain
containers is refused.
"""

import json
import os
import tempfile
from pathlib import Path

import torch

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
