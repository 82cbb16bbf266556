"""``pyro-vae train --model ssvae --unlabelled DATASET``: another data set's training images join the
unlabelled points, recorded in run.json and read again by a resume."""

import gzip
import json

import pytest
import torch
from run_helpers import fails, idx_bytes

from pyro_vae import runs
from pyro_vae.cli import main

AMAT_TRAIN = 60
BASE = ["train", "--dataset", "mnist10k", "--binarize", "dynamic", "--epochs", "1", "--no-progress"]
SSVAE = [*BASE, "--model", "ssvae", "--labels", "20", "--hidden", "16", "--z-dim", "4"]


@pytest.fixture
def root(tmp_path):
    """A data folder with a small mnist10k (2,100 images: 100 train, 2,000 valid) and binarized-mnist."""
    g = torch.Generator().manual_seed(0)
    raw = tmp_path / "data" / "mnist" / "raw"
    raw.mkdir(parents=True)
    images = torch.randint(0, 256, (2100, 28, 28), generator=g)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(torch.arange(2100) % 10)))
    amat = tmp_path / "data" / "binarized_mnist"
    amat.mkdir()
    for split, n in (("train", AMAT_TRAIN), ("valid", 10)):
        rows = torch.randint(0, 2, (n, 784), generator=g)
        (amat / f"binarized_mnist_{split}.amat").write_text(
            "".join(" ".join(map(str, r.tolist())) + "\n" for r in rows)
        )
    return tmp_path / "data"


def test_unlabelled_images_are_trained_on_recorded_and_resumed(root, tmp_path):
    out = tmp_path / "run"
    assert main([*SSVAE, "--data", str(root), "--unlabelled", "binarized-mnist", "--out", str(out)]) == 0
    run = json.loads((out / runs.RUN_JSON).read_text())
    assert run["data"]["unlabelled"] == "binarized-mnist"
    assert run["num_data"] == 100 + AMAT_TRAIN  # mnist10k's 100 training images, then binarized-mnist's 60
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    again = json.loads((out / runs.RUN_JSON).read_text())
    assert again["epoch"] == 2 and again["data"]["unlabelled"] == "binarized-mnist"
    assert again["num_data"] == 100 + AMAT_TRAIN  # the resume read binarized-mnist's images again


def test_unlabelled_refuses_in_one_line_before_writing(root, tmp_path, capsys):
    out = tmp_path / "new"
    for argv, words in (
        ([*BASE, "--unlabelled", "binarized-mnist"], "--unlabelled is an option of --model ssvae or m1m2"),
        ([*SSVAE, "--unlabelled", "mnist10k"], "--unlabelled mnist10k is --dataset itself"),
        ([*SSVAE, "--unlabelled", "digits"], "unlabelled images of digits"),
    ):
        capsys.readouterr()
        fails([*argv, "--data", str(root), "--out", str(out)], capsys, words)
        assert not out.exists()
