"""Checkpoints are loaded without running pickled code, are written atomically, and a
checkpoint of another model or configuration is refused with an error saying what
differs."""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from run_helpers import exit_code

from pyro_vae import build_vae, load_dataset, load_run
from pyro_vae.cli import main
from pyro_vae.runs.files import (
    CheckpointError,
    atomic_write,
    check_config,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from pyro_vae.train import rng
from pyro_vae.train.checkpoints import Checkpointer
from pyro_vae.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_run(out):
    assert (
        main(
            [
                "train",
                "--epochs",
                "1",
                "--hidden",
                "16",
                "--z-dim",
                "4",
                "--binarize",
                "dynamic",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )


def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": Evil(marker)}, path)

    with pytest.raises(CheckpointError, match=r"refusing to load .*checkpoint.pt.*execute pickled code"):
        load_checkpoint(path)
    assert not marker.exists()

    # the file is truly malicious: an unsafe load runs its code (so the check above can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_cli_refuses_a_malicious_checkpoint_in_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out)
    marker = tmp_path / "pwned"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["payload"] = Evil(marker)
    torch.save(state, out / "checkpoint.pt")
    assert exit_code(["sample", str(out), "--out", str(tmp_path / "s.png")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert exit_code(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "s.png").exists()


def test_a_plain_pickle_and_a_truncated_file_are_refused(tmp_path):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": np.arange(3)}))
    with pytest.raises(CheckpointError, match="p.pt"):
        load_checkpoint(tmp_path / "p.pt")
    buf = io.BytesIO()
    torch.save({"w": torch.randn(100)}, buf)
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[:200])
    with pytest.raises(CheckpointError, match="cut.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize(
    "other, says",
    [
        (dict(z_dim=6), r"z_dim: checkpoint 4, model 6"),
        (dict(hidden_dims=(32,)), r"hidden_dims: checkpoint \[16\], model \[32\]"),
    ],
)
def test_a_checkpoint_of_another_configuration_says_what_differs(other, says):
    saved = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    model = build_vae((1, 8, 8), **{"z_dim": 4, "hidden_dims": (16,), **other})
    with pytest.raises(CheckpointError, match=says):
        check_config(saved.config, model.config)
    # without configurations, the shapes say it
    with pytest.raises(CheckpointError, match=r"shapes differ: .*checkpoint \(\d+, \d+\) vs model \(\d+, \d+\)"):
        load_weights(model, saved.state_dict())
    # the trainer checks both
    train = load_dataset("digits", "train", binarize="static")
    trainer = Trainer(saved, train)
    state = trainer.state_dict()
    with pytest.raises(CheckpointError, match=says):
        Trainer(model, train).load_state_dict(state)


def test_another_architecture_names_missing_and_unexpected_weights():
    mlp = build_vae((1, 8, 8), z_dim=4, network="mlp", hidden_dims=(16,))
    conv = build_vae((1, 8, 8), z_dim=4, network="conv")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: .*not in the model: "):
        load_weights(conv, mlp.state_dict())
    with pytest.raises(CheckpointError, match="network: checkpoint 'mlp', model 'conv'"):
        check_config(mlp.config, conv.config)


def test_load_run_with_a_checkpoint_copied_from_another_run(tmp_path):
    tiny_run(tmp_path / "a")
    assert (
        main(
            [
                "train",
                "--epochs",
                "1",
                "--hidden",
                "32",
                "--z-dim",
                "4",
                "--binarize",
                "dynamic",
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    (tmp_path / "b" / "checkpoint.pt").write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"hidden_dims: checkpoint \[16\], run.json of .*b \[32\]"):
        load_run(tmp_path / "b")


def test_checkpoint_holds_only_tensors_and_plain_values(tmp_path):
    train = load_dataset("digits", "train", binarize="dynamic")
    trainer = Trainer(build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,)), train, batch_size=256)
    trainer.run(1, progress=False)
    save_checkpoint(tmp_path / "c.pt", trainer.state_dict())
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only: would fail on any other object
    assert set(state) >= {"model", "optimizer", "rng", "generator", "epoch", "step", "epoch_step", "history"}
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"torch", "python", "numpy"}


def test_rng_state_round_trip_restores_every_generator():
    import random

    state = rng.get_state()
    draws = (torch.rand(3), random.random(), np.random.rand(3))
    rng.set_state(state)
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(draws[0], again[0]) and draws[1] == again[1] and np.array_equal(draws[2], again[2])


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def half_write(f):
        f.write(b"new but ")
        raise KeyboardInterrupt  # e.g. a signal in the middle of the save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_write)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_signal_during_a_save_is_raised_after_both_files_are_written(tmp_path, monkeypatch):
    import signal
    import threading
    import time

    from pyro_vae.train import checkpoints

    train = load_dataset("digits", "train", binarize="dynamic", seed=0)
    trainer = Trainer(build_vae((1, 8, 8), z_dim=2, hidden_dims=(16,)), train, batch_size=256)
    written = []

    def checkpoint_then_sigint(path, state):
        written.append(path.name)
        # Ctrl-C between checkpoint.pt and run.json, sent to the process from another
        # thread, which the kernel may pick to take it (as it may pick one of torch's)
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        sender.join()
        time.sleep(0.05)  # time for CPython to run the handler in this thread

    monkeypatch.setattr(checkpoints, "save_checkpoint", checkpoint_then_sigint)
    monkeypatch.setattr(checkpoints, "save_json", lambda path, obj: written.append(path.name))
    # a shell's background job starts with SIGINT ignored: give it Python's usual handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Checkpointer(tmp_path).save(trainer)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert written == ["checkpoint.pt", "run.json"]  # the pair is whole; the signal came after


def test_checkpointer_clears_the_temporary_files_of_a_killed_save(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".run.json.xyz.tmp").write_bytes(b"{")
    (tmp_path / "notes.txt").write_text("mine")
    Checkpointer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resuming_on_another_number_of_processes_is_refused():
    train = load_dataset("digits", "train", binarize="dynamic")
    trainer = Trainer(build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,)), train)
    state = trainer.state_dict()
    state["rng"] = state["rng"] * 2
    with pytest.raises(CheckpointError, match="run on 2 processes.*torchrun --nproc_per_node 2"):
        Trainer(build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,)), train).load_state_dict(state)
