"""``pyro-vae train --init RUN_DIR``: a new run that starts from another run's weights."""

import json

import torch
from run_helpers import exit_code

from pyro_vae import load_run, runs
from pyro_vae.cli import main

BASE = ["train", "--epochs", "2", "--binarize", "dynamic", "--no-progress"]


def _weights(run_dir, which):
    state = runs.load_checkpoint(run_dir / runs.CHECKPOINT)
    return runs.run_weights(state, which)


def test_init_starts_from_the_weights_evaluate_uses_and_records_them(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*BASE, "--out", str(first)]) == 0
    fresh, _ = load_run(first, weights="raw")
    start = _weights(first, "best")
    # a learning rate so small that one epoch leaves the weights where they started
    assert main([*BASE, "--epochs", "1", "--lr", "1e-12", "--init", str(first), "--out", str(second)]) == 0
    after = _weights(second, "raw")
    moved = 0.0
    for name, value in start.items():
        assert torch.allclose(after[name], value, atol=1e-6), name
        moved = max(moved, (value - fresh.state_dict()[name]).abs().max().item())
    # the run's seed alone would give other weights: those it started from are the trained ones
    untrained = tmp_path / "untrained"
    assert main([*BASE, "--epochs", "1", "--lr", "1e-12", "--out", str(untrained)]) == 0
    assert any(not torch.allclose(_weights(untrained, "raw")[k], v, atol=1e-3) for k, v in start.items())
    run = json.loads((second / runs.RUN_JSON).read_text())
    assert run["init"]["run"] == str(first) and run["init"]["weights"] == "best"
    assert run["init"]["epochs_trained"] == 2
    # a resume keeps the record
    assert main(["train", "--resume", str(second), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((second / runs.RUN_JSON).read_text())["init"] == run["init"]


def test_init_refuses_another_model_or_no_run_before_writing(tmp_path, capsys):
    first = tmp_path / "first"
    assert main([*BASE, "--epochs", "1", "--out", str(first)]) == 0
    out = tmp_path / "new"
    assert exit_code([*BASE, "--z-dim", "3", "--init", str(first), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "z_dim" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert exit_code([*BASE, "--init", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no run.json there" in capsys.readouterr().err
    assert not out.exists()
    assert exit_code(["train", "--resume", str(first), "--init", str(first), "--epochs", "2"]) == 2
    assert "--init" in capsys.readouterr().err
