"""Ctrl-C (SIGINT) and SIGTERM during ``pyro-vae train``: one line naming what the last
checkpoint holds and the command that continues it, the shell's exit code (130, 143), and
a resume that ends where the uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from run_helpers import TINY, exit_code

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = ["train", "--dataset", "digits", "--epochs", "12", "--seed", "0", *TINY]
# a shell's foreground job: SIGINT raises KeyboardInterrupt even where the test runner's shell ignores it
CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from pyro_vae.cli import main; sys.exit(main(sys.argv[1:]))"
)


def checkpointed_weights(folder):
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    history = {k: v for k, v in state["history"].items() if k != "epoch_seconds"}  # all but wall times
    return state["model"], history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert exit_code([*TRAIN, "--out", str(out)]) == 0
    return checkpointed_weights(out)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_training_with_one_line_and_the_resume_command(tmp_path, uninterrupted, sig, code):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *TRAIN, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():  # the first epoch's checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    epoch = json.loads((out / "run.json").read_text())["epoch"]
    assert 1 <= epoch < 12
    assert lines[0] == (
        f"pyro-vae train: stopped by {signal.Signals(sig).name}; its last checkpoint holds "
        f"{epoch} complete epochs (step {json.loads((out / 'run.json').read_text())['step']}); "
        f"continue with: pyro-vae train --resume {out}"
    )
    assert not list(out.glob(".*.tmp")) and not (out / ".pyro-vae.lock").exists()  # nothing half-written

    assert exit_code(["train", "--resume", str(out), "--no-progress"]) == 0
    model, history = checkpointed_weights(out)
    ref_model, ref_history = uninterrupted
    assert history == ref_history
    for name in ref_model:
        assert torch.equal(model[name], ref_model[name]), name


def test_a_signal_before_the_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from pyro_vae.train import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    out = tmp_path / "run"
    assert exit_code([*TRAIN, "--out", str(out)]) == 130
    assert capsys.readouterr().err == (
        "pyro-vae train: stopped by SIGINT; no checkpoint was saved yet: nothing to resume\n"
    )
    assert not out.exists()
