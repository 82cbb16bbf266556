import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from run_helpers import exit_code

from pyro_vae import load_run
from pyro_vae.cli import main


def test_train_writes_a_run_folder_and_sample_reads_it(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--binarize", "dynamic", "--out", str(out), "--no-progress"]) == 0
    for name in ("checkpoint.pt", "run.json", "loss_curves.png", "reconstructions.png", "samples.png", "overview.png"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["likelihood"] == "bernoulli" and run["data"]["dataset"] == "digits"
    assert len(run["history"]["train_loss"]) == 2 and len(run["history"]["valid_loss"]) == 2
    for name in ("loss_curves.png", "reconstructions.png", "samples.png", "overview.png"):
        img = torch.tensor(list(Image.open(out / name).convert("L").getdata()), dtype=torch.float32)
        assert img.var() > 0, name  # not blank
    model, _ = load_run(out)
    assert model.sample(3).shape == (3, 64)
    assert main(["sample", str(out), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 28


def test_default_likelihood_follows_the_data(tmp_path):
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    run = json.loads((tmp_path / "g" / "run.json").read_text())
    assert run["model"]["likelihood"] == "gaussian"


def test_errors_are_clear_and_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert exit_code(["train", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert (
        exit_code(
            ["train", "--dataset", "binarized-mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "binarized_mnist_train.amat" in capsys.readouterr().err
    assert exit_code(["train", "--likelihood", "bernoulli", "--out", str(tmp_path / "y")]) == 2
    assert "binarize" in capsys.readouterr().err
    assert exit_code(["train", "--batch-size", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout


def test_train_traced_writes_a_run_that_resumes(tmp_path):
    out = tmp_path / "run"
    argv = [
        "train",
        "--traced",
        "--fused",
        "--binarize",
        "static",
        "--batch-size",
        "499",
        "--hidden",
        "16",
        "--z-dim",
        "2",
        "--no-progress",
    ]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["traced"] is True and run["train"]["fused"] is True
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert len(json.loads((out / "run.json").read_text())["history"]["train_loss"]) == 2
    # evaluate --traced: the eager report's numbers from the compiled graph
    reports = []
    for extra in ([], ["--traced"]):
        path = tmp_path / f"eval{len(extra)}.json"
        assert (
            main(
                [
                    "evaluate",
                    str(out),
                    "-K",
                    "10",
                    "--limit",
                    "20",
                    "--batch-size",
                    "10",
                    "--chunk-size",
                    "10",
                    "--no-progress",
                    "--out",
                    str(path),
                    *extra,
                ]
            )
            == 0
        )
        reports.append(json.loads(path.read_text()))
    for key in ("nll", "neg_elbo", "active_units"):
        assert reports[1][key] == pytest.approx(reports[0][key], rel=1e-5), key


def test_train_with_the_vamp_prior_then_evaluate_and_resume(tmp_path, capsys):
    out = tmp_path / "vamp"
    argv = [
        "train",
        "--prior",
        "vamp",
        "--pseudo-inputs",
        "20",
        "--binarize",
        "static",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "VampPrior of 20 pseudo-inputs" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["prior"] == "vamp" and run["model"]["pseudo_inputs"] == 20
    model, _ = load_run(out)
    assert model.prior_kind == "vamp" and model.vamp.pseudo_inputs.shape == (20, 64)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert main(["evaluate", str(out), "-K", "20", "--iwae-k", "5", "--no-progress"]) == 0
    report = json.loads((out / "eval_valid.json").read_text())
    assert report["nll"] <= report["neg_elbo"] + 0.5  # the K = 20 estimate, below the ELBO up to its noise


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "cvae", "--prior", "vamp"],
            "--prior vamp does not apply to --model cvae (choose fixed or learned)",
        ),
        (["--prior", "learned"], "--prior learned does not apply to --model vae (choose fixed or vamp)"),
        (["--model", "ae", "--prior", "fixed"], "--model ae takes no --prior: p(z) = N(0, I)"),
        (["--pseudo-inputs", "10"], "--pseudo-inputs is the VampPrior's K: it needs --prior vamp"),
        (["--prior", "vamp", "--pseudo-inputs", "0"], "--pseudo-inputs"),
    ],
)
def test_prior_options_that_do_not_apply_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert exit_code(["train", *argv, "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_plot_refuses_a_vamp_prior_run_before_writing(tmp_path, capsys):
    out = tmp_path / "vamp"
    assert (
        main(
            [
                "train",
                "--prior",
                "vamp",
                "--pseudo-inputs",
                "5",
                "--binarize",
                "static",
                "--hidden",
                "16",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert exit_code(["plot", str(out), "--out", str(tmp_path / "plots"), "--no-classifier"]) == 2
    assert "VampPrior; pyro-vae plot measures the latent space against p(z) = N(0, I)" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()
