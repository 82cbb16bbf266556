"""Helpers shared by the tests of run folders and checkpoints (a module, not a test file)."""

import io
import struct
from pathlib import Path

import torch

from pyro_vae.cli import main

#: the smallest training a run folder needs (digits, seconds)
TINY = ["--hidden", "16", "--z-dim", "4", "--binarize", "dynamic", "--no-progress"]


def snapshot(folder):
    """Every file of ``folder`` and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def exit_code(argv):
    """``pyro-vae argv``'s exit status: what ``main`` returns, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def fails(argv, capsys, *says):
    """Run the command; it must exit 2 with one line on stderr (no traceback) holding each of ``says``."""
    code = exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    for s in says:
        assert s in err, (s, err)
    return err


def digits_data():
    """The digits training (dynamically binarized) and validation (static) sets."""
    from pyro_vae import load_dataset

    return (load_dataset("digits", "train", binarize="dynamic"), load_dataset("digits", "valid", binarize="static"))


def make_trainer(init_seed=0, **kw):
    """A small VAE's trainer on the digits (z_dim 4, 16 hidden units, batch 64: 24 steps an
    epoch), its weights initialized from ``init_seed``."""
    from pyro_vae import build_vae
    from pyro_vae.train.trainer import Trainer

    train, valid = digits_data()
    torch.manual_seed(init_seed)
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    return Trainer(vae, train, valid, batch_size=64, lr=3e-3, seed=0, **kw)


def round_trip(state):
    """What a checkpoint gives back: through torch.save and a weights_only load."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def idx_bytes(array, dtype_code=0x08):
    """An IDX file (the MNIST format) holding ``array`` (uint8)."""
    header = struct.pack(">BBBB", 0, 0, dtype_code, array.dim()) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()
