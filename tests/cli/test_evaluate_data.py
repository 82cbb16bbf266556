"""``pyro-vae evaluate`` and ``pyro-vae posterior`` read a run's data from the folder the
run was trained with (its stored ``--data``) when none is given."""

import json

import numpy as np
import pytest

from pyro_vae.cli import main


def write_amat(folder, split, n, seed):
    rng = np.random.default_rng(seed)
    rows = (rng.random((n, 784)) < 0.2).astype(int)
    (folder / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")


@pytest.fixture
def run_on_own_data(tmp_path, monkeypatch):
    data = tmp_path / "my-data"
    data.mkdir()
    write_amat(data, "train", 200, 0)
    write_amat(data, "valid", 40, 1)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "binarized-mnist",
                "--data",
                str(data),
                "--epochs",
                "1",
                "--hidden",
                "16",
                "--z-dim",
                "2",
                "--batch-size",
                "50",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./data here
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    return out


def test_evaluate_finds_the_data_folder_the_run_was_trained_with(run_on_own_data, capsys):
    assert main(["evaluate", str(run_on_own_data), "-K", "10", "--no-progress"]) == 0
    result = json.loads((run_on_own_data / "eval_valid.json").read_text())
    assert result["n"] == 40 and result["dataset"] == "binarized-mnist"


def test_a_given_data_folder_still_wins(run_on_own_data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(run_on_own_data), "-K", "10", "--no-progress", "--data", str(empty)]) == 2
    assert "binarized_mnist_valid.amat" in capsys.readouterr().err
