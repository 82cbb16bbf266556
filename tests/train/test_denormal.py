"""Subnormal floats flushed to zero for a scope, and the Trainer's ``flush_denormal``."""

import subprocess
import sys

import pytest
import torch
from run_helpers import make_trainer

from pyro_vae.train.denormal import flush_denormal, flushing


def subnormal_product():
    return (torch.tensor([1e-20]) * torch.tensor([1e-19])).item()  # 1e-39: subnormal in float32


def test_the_flush_holds_inside_the_block_only_and_survives_an_error():
    assert not flushing() and subnormal_product() != 0.0
    with flush_denormal():
        assert flushing() and subnormal_product() == 0.0
    assert not flushing() and subnormal_product() != 0.0
    with pytest.raises(RuntimeError):
        with flush_denormal():
            raise RuntimeError("inside")
    assert not flushing()
    with flush_denormal(enabled=False):
        assert not flushing()


def test_a_flush_already_on_stays_on_after_the_block():
    torch.set_flush_denormal(True)
    try:
        with flush_denormal():
            assert flushing()
        assert flushing()
    finally:
        torch.set_flush_denormal(False)


def test_the_trainer_flushes_during_its_steps_and_validation_only(monkeypatch):
    from pyro_vae.train import trainer as trainer_module

    seen = []
    evaluate_loss = trainer_module.evaluate_loss
    monkeypatch.setattr(
        trainer_module, "evaluate_loss", lambda *a, **k: (seen.append(("valid", flushing())), evaluate_loss(*a, **k))[1]
    )
    trainer = make_trainer(flush_denormal=True)
    trainer.run(1, progress=False, step_callback=lambda t: seen.append(("step", flushing())))
    assert seen and all(on for _, on in seen) and ("valid", True) in seen
    assert not flushing()
    # the same losses as without it where no value is subnormal
    plain = make_trainer()
    plain.run(1, progress=False)
    assert trainer.history.train_loss == plain.history.train_loss
    assert trainer.history.valid_loss == plain.history.valid_loss


WORKERS_AFTER_THE_BLOCK = """
import torch
from pyro_vae.train.denormal import flush_denormal
torch.set_num_threads(1)
n = 2 * 65536  # elements enough for a kernel to split across both intra-op threads
x = torch.full((n,), 1e-39)
torch.set_num_threads(2)
with flush_denormal():
    (x * 1.0).sum()  # the process's first parallel kernel
print(int(((x * 1.0) == 0).sum()))
"""


def test_intra_op_threads_made_inside_the_block_do_not_keep_the_flush():
    """A thread takes its creator's floating-point mode when it is created and keeps it: torch's
    intra-op workers, first started by a kernel inside the block, must not flush after it."""
    out = subprocess.run([sys.executable, "-c", WORKERS_AFTER_THE_BLOCK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr
