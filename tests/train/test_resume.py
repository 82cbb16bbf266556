"""Checkpoints and resume: a run stopped anywhere (even by SIGKILL) and resumed ends
bit-identical to the run never stopped; NaN losses stop a run at that step with the
last good checkpoint on disk; gradient clipping bounds the step.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import exit_code, make_trainer, round_trip

from pyro_vae.cli import main
from pyro_vae.runs import load_checkpoint
from pyro_vae.train.checkpoints import Checkpointer
from pyro_vae.train.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 24  # ceil(1497 / 64) digits training images, batch 64


class Stop(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


def params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("stop_at", ["mid-epoch", "last step of an epoch", "epoch end"])
def test_state_dict_continues_bit_identically(stop_at):
    ref = make_trainer(0)
    ref.run(3, progress=False)

    first = make_trainer(0)
    saved = {}

    def on_step(t):
        if (stop_at == "mid-epoch" and t.step_count == 30) or (
            stop_at == "last step of an epoch" and t.step_count == STEPS_PER_EPOCH
        ):
            saved["state"] = round_trip(t.state_dict())
            raise Stop

    def on_epoch(t):
        if stop_at == "epoch end":
            saved["state"] = round_trip(t.state_dict())
            raise Stop

    with pytest.raises(Stop):
        first.run(3, progress=False, callback=on_epoch, step_callback=on_step)
    first.step(*next(first.train_data.batches(64, generator=torch.Generator())))  # moves on: must not matter

    resumed = make_trainer(123)  # another initialisation and other RNG states, all overwritten
    resumed.load_state_dict(saved["state"])
    assert resumed.epoch_step == {"mid-epoch": 6, "last step of an epoch": STEPS_PER_EPOCH, "epoch end": 0}[stop_at]
    resumed.run(3 - resumed.epoch, progress=False)
    assert resumed.step_count == ref.step_count == 3 * STEPS_PER_EPOCH
    for a, b in zip(params(ref.vae), params(resumed.vae)):
        assert torch.equal(a, b)
    assert resumed.history.train_loss == ref.history.train_loss
    assert resumed.history.valid_loss == ref.history.valid_loss
    assert len(resumed.history.epoch_seconds) == 3


def test_a_resume_without_the_rng_states_would_differ():
    """The comparison above can fail: restoring all but the global RNG changes the result."""
    ref = make_trainer(0)
    ref.run(2, progress=False)
    first = make_trainer(0)
    first.run(1, progress=False)
    state = round_trip(first.state_dict())
    resumed = make_trainer(0)
    resumed.load_state_dict(state)
    torch.manual_seed(99)  # Pyro's draws of z now come from another stream
    resumed.run(1, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(params(ref.vae), params(resumed.vae)))


def test_checkpointer_saves_every_n_steps_and_at_epoch_ends(tmp_path):
    trainer = make_trainer(0)
    ckpt = Checkpointer(tmp_path, every=10, run={"note": "x"})
    steps_seen = []

    def on_step(t):
        ckpt.on_step(t)
        if (tmp_path / "checkpoint.pt").exists():
            steps_seen.append(load_checkpoint(tmp_path / "checkpoint.pt")["step"])
        if t.step_count == 35:
            raise Stop

    with pytest.raises(Stop):
        trainer.run(3, progress=False, callback=ckpt.on_epoch, step_callback=on_step)
    # steps 10, 20 mid-epoch; 24 at the end of epoch 1 (after validation); then 30
    assert sorted(set(steps_seen)) == [10, 20, 24, 30]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["step"], state["epoch"], state["epoch_step"]) == (30, 1, 6)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["note"] == "x" and run["step"] == 30 and len(run["history"]["train_loss"]) == 1
    assert "checkpoint.pt (saved after step 30, epoch 2, batch 6)" in trainer.last_checkpoint


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path):
    """A real ``pyro-vae train`` process is killed with SIGKILL after a randomly chosen
    checkpoint plus a random delay, resumed with ``--resume``, and must end with the
    parameters of the same run never interrupted (CPU, one thread)."""
    opts = [
        "--epochs",
        "3",
        "--hidden",
        "16",
        "--z-dim",
        "4",
        "--batch-size",
        "64",
        "--binarize",
        "dynamic",
        "--lr",
        "0.003",
        "--checkpoint-every",
        "4",
        "--no-progress",
        "--seed",
        "3",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # meanwhile (below), the uninterrupted run, in this process with one thread as well
    full_run = [lambda: main(["train", *opts, "--out", str(tmp_path / "full")])]
    rnd = random.Random()
    for attempt in range(5):  # a kill that comes after the run's last step is drawn again
        killed = tmp_path / f"killed{attempt}"
        at_kill = _kill_at_random_moment(rnd, opts, env, killed, full_run)
        if at_kill is not None and at_kill["step"] < 3 * STEPS_PER_EPOCH:
            break
    assert at_kill is not None and at_kill["step"] < 3 * STEPS_PER_EPOCH, "every kill came after the run's end"
    r = subprocess.run(
        [sys.executable, "-m", "pyro_vae.cli", "train", "--resume", str(killed), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"resuming after step {at_kill['step']}" in r.stdout
    full, resumed = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert resumed["step"] == full["step"] == 3 * STEPS_PER_EPOCH
    assert full["model"].keys() == resumed["model"].keys()
    for name in full["model"]:
        assert torch.equal(full["model"][name], resumed["model"][name]), name
    assert resumed["history"]["train_loss"] == full["history"]["train_loss"]
    assert resumed["history"]["valid_loss"] == full["history"]["valid_loss"]


def _kill_at_random_moment(rnd, opts, env, killed, full_run):
    """Start ``pyro-vae train`` into ``killed``, run ``full_run`` (if still to run) while it
    trains, and SIGKILL it after a randomly chosen checkpoint plus a random delay; returns
    its last checkpoint, or None if it ended before the kill."""
    target = rnd.randrange(4, 2 * STEPS_PER_EPOCH + 1, 4)  # a checkpoint step, at least 24 steps before the end
    delay = rnd.uniform(0.0, 0.1)
    print(f"killing after the checkpoint of step {target} and {delay:.3f} s more")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.cli", "train", *opts, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while full_run:
            assert full_run.pop()() == 0
        step = 0
        while step < target:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                step = json.loads((killed / "run.json").read_text())["step"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()
            return None  # the run ended before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(killed / "checkpoint.pt")
    assert target <= at_kill["step"] <= 3 * STEPS_PER_EPOCH
    return at_kill


class NaNAfter(torch.nn.Module):
    """A decoder that returns NaN from its (k+1)-th call on: a training step that diverges."""

    def __init__(self, decoder, k):
        super().__init__()
        self.decoder, self.k, self.calls = decoder, k, 0
        self.x_dim = decoder.x_dim

    def forward(self, z):
        self.calls += 1
        out = self.decoder(z)
        return out * float("nan") if self.calls > self.k else out


def test_nan_loss_stops_at_that_step_and_the_checkpoint_keeps_the_last_good_parameters(tmp_path):
    trainer = make_trainer(0)
    trainer.vae.decoder = NaNAfter(trainer.vae.decoder, k=13)  # training steps call the decoder once
    ckpt = Checkpointer(tmp_path, every=5)
    saved = {}

    def on_step(t):
        ckpt.on_step(t)
        if t.step_count % 5 == 0:
            saved[t.step_count] = params(t.vae)

    with pytest.raises(NonFiniteLossError) as err:
        trainer.run(2, progress=False, callback=ckpt.on_epoch, step_callback=on_step)
    msg = str(err.value)
    assert "loss is nan at step 14 (epoch 1, batch 14)" in msg
    assert f"the last good checkpoint is {tmp_path / 'checkpoint.pt'} (saved after step 10" in msg
    assert trainer.step_count == 13
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 10
    model = state["model"]
    assert all(torch.isfinite(v).all() for v in model.values())
    for a, b in zip(saved[10], [model[k] for k, _ in trainer.vae.named_parameters()]):
        assert torch.equal(a, b)


def test_non_finite_parameters_are_never_saved(tmp_path):
    trainer = make_trainer(0)
    ckpt = Checkpointer(tmp_path, every=1)
    trainer.run(1, progress=False, callback=ckpt.on_epoch, step_callback=ckpt.on_step)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.vae.decoder.net[0].bias[0] = float("inf")
    with pytest.raises(
        NonFiniteLossError,
        match=r"decoder.net.0.bias hold NaN or inf after step 24.*"
        r"last good checkpoint is .*checkpoint.pt",
    ):
        ckpt.save(trainer)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_cli_divergent_run_stops_with_the_step_and_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = exit_code(
        [
            "train",
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--z-dim",
            "4",
            "--lr",
            "1e30",
            "--checkpoint-every",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--binarize",
            "dynamic",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "loss is nan at step" in err or "loss is inf at step" in err or "hold NaN or inf" in err
    assert f"last good checkpoint is {out / 'checkpoint.pt'}" in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "samples.png").exists()  # no figures of a diverged model


def test_clip_norm_bounds_the_gradient_norm():
    """With SGD, θ' = θ − lr·g, so ‖θ − θ'‖ / lr is the norm of the gradient applied."""
    lr, clip = 1e-3, 0.5

    def applied_norm(clip_norm):
        trainer = make_trainer(0, optimizer="sgd", clip_norm=clip_norm)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        before = params(trainer.vae)
        trainer.step(*next(trainer.train_data.batches(64, generator=torch.Generator().manual_seed(0))))
        after = params(trainer.vae)
        return torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(before, after))).item() / lr

    free = applied_norm(None)
    assert free > 10 * clip  # the test means something: unclipped, the norm is far larger (9.8 here)
    clipped = applied_norm(clip)
    assert clipped == pytest.approx(clip, rel=1e-3)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        make_trainer(0, clip_norm=0.0)


def test_a_nan_gradient_with_a_finite_loss_is_caught_when_clipping():
    trainer = make_trainer(0, clip_norm=1.0)
    weight = trainer.vae.decoder.net[0].weight
    weight.register_hook(lambda g: g * float("nan"))
    before = params(trainer.vae)
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at step 1 \(epoch 1, batch 1\)"):
        trainer.run(1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer.vae)))
