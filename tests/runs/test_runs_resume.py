"""pyro_vae.resume and fit(..., out=...): a run written from Python or from the command line
continues from either, bit-identically to the run never stopped."""

import json

import pytest
import torch

import pyro_vae
from pyro_vae import build_model, fit, load_dataset
from pyro_vae.cli import main
from pyro_vae.runs import CheckpointError, RunLock, RunLockedError

#: a small VAE on the digits, with every part of the recipe that carries state across epochs
MODEL = dict(
    model="vae",
    image_shape=[1, 8, 8],
    z_dim=4,
    network="mlp",
    hidden_dims=[16],
    likelihood="bernoulli",
    guide="diagonal",
    scale=None,
)
RECIPE = dict(
    batch_size=64,
    lr=3e-3,
    seed=0,
    lr_schedule="cosine",
    schedule_epochs=4,
    kl_warmup=1.5,
    ema_decay=0.9,
    keep_best=True,
)
CLI = [
    "--hidden",
    "16",
    "--z-dim",
    "4",
    "--binarize",
    "dynamic",
    "--batch-size",
    "64",
    "--lr",
    "3e-3",
    "--lr-schedule",
    "cosine",
    "--schedule-epochs",
    "4",
    "--kl-warmup",
    "1.5",
    "--ema",
    "0.9",
    "--no-progress",
]


def data():
    return (
        load_dataset("digits", "train", binarize="dynamic", seed=0),
        load_dataset("digits", "valid", binarize="dynamic", seed=0),
    )


def fit_to(out, epochs):
    torch.manual_seed(0)  # the initial weights, as pyro-vae train seeds them
    vae = build_model(MODEL)
    fit(vae, *data(), epochs=epochs, progress=False, out=out, **RECIPE)
    return vae


def cli_to(out, epochs):
    assert main(["train", "--epochs", str(epochs), "--out", str(out), *CLI]) == 0


def assert_same_run(a, b):
    """The same weights (trained, averaged, best), optimizer state, random state and history."""
    sa, sb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
    for key in ("model", "ema"):
        assert sa[key].keys() == sb[key].keys()
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key
    assert sa["best"]["epoch"] == sb["best"]["epoch"]
    assert all(torch.equal(sa["best"]["model"][k], sb["best"]["model"][k]) for k in sa["best"]["model"])
    assert all(
        torch.equal(x, y) for x, y in zip(sa["optimizer"]["state"][0].values(), sb["optimizer"]["state"][0].values())
    )
    for ra, rb in zip(sa["rng"], sb["rng"]):
        assert torch.equal(ra["torch"], rb["torch"]) and torch.equal(ra["numpy"]["keys"], rb["numpy"]["keys"])
    assert torch.equal(sa["generator"], sb["generator"])
    ha, hb = (json.loads((d / "run.json").read_text())["history"] for d in (a, b))
    assert ha["train_loss"] == hb["train_loss"] and ha["valid_loss"] == hb["valid_loss"]
    assert len(ha["valid_loss"]) == 4
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ra["train"] == rb["train"] and ra["model"] == rb["model"]


def test_fit_then_resume_equals_fit_to_the_end(tmp_path):
    fit_to(tmp_path / "whole", 4)
    fit_to(tmp_path / "split", 2)
    run = json.loads((tmp_path / "split" / "run.json").read_text())
    assert run["train"]["epochs"] == 2 and run["data"]["dataset"] == "digits" and run["epoch"] == 2
    model, history = pyro_vae.resume(tmp_path / "split", epochs=4)
    assert len(history.valid_loss) == 4 and model.z_dim == 4
    assert_same_run(tmp_path / "whole", tmp_path / "split")
    assert json.loads((tmp_path / "split" / "run.json").read_text())["train"]["epochs"] == 4


def test_the_command_line_then_resume_from_python_equals_the_command_line_to_the_end(tmp_path):
    cli_to(tmp_path / "whole", 4)
    cli_to(tmp_path / "split", 2)
    pyro_vae.resume(tmp_path / "split", epochs=4)
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_fit_then_resume_from_the_command_line_equals_fit_to_the_end(tmp_path):
    fit_to(tmp_path / "whole", 4)
    fit_to(tmp_path / "split", 2)
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "4", "--no-progress"]) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_fit_and_the_command_line_write_the_same_run(tmp_path):
    """fit's run folder and pyro-vae train's are one format: the same settings, weights and history."""
    cli_to(tmp_path / "cli", 4)
    fit_to(tmp_path / "fit", 4)
    assert_same_run(tmp_path / "cli", tmp_path / "fit")


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    fit_to(tmp_path / "run", 1)
    with pytest.raises(ValueError, match="already trained 1 epochs; pass epochs=N with N > 1"):
        pyro_vae.resume(tmp_path / "run", epochs=1)
    with pytest.raises(CheckpointError, match="there is no run.json there"):
        pyro_vae.resume(tmp_path / "nothing", epochs=2)
    with RunLock(tmp_path / "run"):  # a second writer is refused, as the command line's is
        with pytest.raises(RunLockedError, match="is being written by another pyro-vae process"):
            pyro_vae.resume(tmp_path / "run", epochs=2)


def test_fit_out_refuses_what_it_could_not_resume(tmp_path):
    train, valid = data()
    fit_to(tmp_path / "run", 1)
    with pytest.raises(CheckpointError, match="already holds a run; continue it with pyro_vae.resume"):
        fit_to(tmp_path / "run", 1)
    bare = pyro_vae.ImageData(x=train.x, image_shape=train.image_shape, binarize="dynamic")
    with pytest.raises(ValueError, match="train has no source; load it with pyro_vae.load_dataset"):
        fit(build_model(MODEL), bare, epochs=1, progress=False, out=tmp_path / "bare")
    with pytest.raises(TypeError, match="unknown option num_epochs"):
        fit(build_model(MODEL), train, progress=False, num_epochs=1)
    assert not (tmp_path / "bare").exists()
