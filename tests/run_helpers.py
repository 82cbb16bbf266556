"""Helpers shared by the tests of run folders and checkpoints (a module, not a test file)."""

import io
from pathlib import Path

import torch

from pyro_vae.cli import main

#: the smallest training a run folder needs (digits, seconds)
TINY = ["--hidden", "16", "--z-dim", "4", "--binarize", "dynamic", "--no-progress"]


def snapshot(folder):
    """Every file of ``folder`` and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def fails(argv, capsys, *says):
    """Run the command; it must exit 2 with one line on stderr (no traceback) holding each of ``says``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    for s in says:
        assert s in err, (s, err)
    return err


def round_trip(state):
    """What a checkpoint gives back: through torch.save and a weights_only load."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
