"""Capture and restore the random number generators a training run draws from.

A run is reproducible step for step only if, on resuming, every generator it draws
from is where it was when the checkpoint was taken:

- PyTorch's global CPU generator: Pyro samples z ~ q(z|x) (and any ``pyro.sample``)
  from it;
- the CUDA generator of the training device, when the model lives on a GPU (Pyro's
  samples of CUDA tensors come from it);
- Python's :mod:`random` and NumPy's global generator (Pyro's
  :func:`pyro.set_rng_seed` seeds them too; user code may draw from them).

The batch order has its own ``torch.Generator`` held by the
:class:`~pyro_vae.train.trainer.Trainer`, saved with the trainer's state.

States are returned as dicts of tensors, ints, floats and None only, so that
``torch.load(weights_only=True)`` reads them back without unpickling any object.
"""

import random

import numpy as np
import torch


def get_state(device=None):
    """The state of every global generator, as plain containers of tensors and numbers.

    :param device: the training device; for a CUDA device its generator's state is
        included under ``"cuda"``.
    :returns: ``{"torch": ByteTensor, "python": {...}, "numpy": {...}[, "cuda": ByteTensor]}``.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_state(state, device=None):
    """Put every generator back where :func:`get_state` found it.

    :param dict state: a state from :func:`get_state` (possibly loaded from disk).
    :param device: the training device; its CUDA generator is restored when the state
        holds one.
    """
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), torch.device(device))
