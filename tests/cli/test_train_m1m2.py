"""``pyro-vae train --model m1m2 --m1 RUN_DIR``: M2 on the features of a VAE run, evaluated and resumed."""

import json

import torch
from run_helpers import exit_code

from pyro_vae import load_run, runs
from pyro_vae.cli import main

BASE = ["train", "--epochs", "2", "--binarize", "dynamic", "--no-progress"]
M2 = [*BASE, "--model", "m1m2", "--labels", "30", "--hidden", "32", "--z-dim", "4"]


def test_m1m2_trains_on_m1s_fixed_weights_evaluates_and_resumes(tmp_path, capsys):
    m1, run_dir = tmp_path / "m1", tmp_path / "m1m2"
    assert main([*BASE, "--z-dim", "6", "--out", str(m1)]) == 0
    vae, _ = load_run(m1)
    assert main([*M2, "--m1", str(m1), "--out", str(run_dir)]) == 0
    run = json.loads((run_dir / runs.RUN_JSON).read_text())
    assert run["model"]["model"] == "m1m2" and run["model"]["likelihood"] == "gaussian"
    assert run["model"]["m1"] == vae.config
    assert run["init"]["run"] == str(m1) and run["init"]["part"] == "m1"
    model, _ = load_run(run_dir)
    for name in ("q", "decoder"):  # M1's weights, as trained, unchanged by M2's training
        for k, v in getattr(vae, name).state_dict().items():
            assert torch.equal(getattr(model.features, name).state_dict()[k], v), (name, k)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "valid", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "M1's features" in out
    report = json.loads((run_dir / "eval_valid.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0
    # a resume needs no --m1: M1's settings are in run.json, its weights in the checkpoint
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--no-progress"]) == 0
    again = json.loads((run_dir / runs.RUN_JSON).read_text())
    assert again["epoch"] == 3 and again["init"] == run["init"]


def test_m1m2_resume_is_bit_identical_to_the_run_never_stopped(tmp_path):
    m1, straight, stopped = tmp_path / "m1", tmp_path / "straight", tmp_path / "stopped"
    assert main([*BASE, "--z-dim", "6", "--out", str(m1)]) == 0
    assert main([*M2, "--epochs", "3", "--m1", str(m1), "--out", str(straight)]) == 0
    assert main([*M2, "--m1", str(m1), "--out", str(stopped)]) == 0
    assert main(["train", "--resume", str(stopped), "--epochs", "3", "--no-progress"]) == 0
    a = runs.load_checkpoint(straight / runs.CHECKPOINT)["model"]
    b = runs.load_checkpoint(stopped / runs.CHECKPOINT)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_m1m2_refuses_in_one_line_before_writing(tmp_path, capsys):
    out = tmp_path / "new"
    hvae = tmp_path / "hvae"
    assert main([*BASE, "--epochs", "1", "--model", "hvae", "--out", str(hvae)]) == 0
    capsys.readouterr()
    for argv, words in (
        ([*M2, "--out", str(out)], "needs --m1 RUN_DIR"),
        ([*M2, "--m1", str(tmp_path / "nothing"), "--out", str(out)], "no run.json there"),
        ([*M2, "--m1", str(hvae), "--out", str(out)], "must be a VAE"),
        ([*BASE, "--m1", str(hvae), "--out", str(out)], "--m1 is an option of --model m1m2"),
    ):
        assert exit_code(argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
