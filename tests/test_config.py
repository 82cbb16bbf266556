"""pyro_vae.config: the typed settings run.json stores, their checks, and its format version."""

import json
from pathlib import Path

import pytest
import torch

from pyro_vae import load_run
from pyro_vae.cli import main
from pyro_vae.config import FORMAT, ConfigError, DataConfig, ModelConfig, TrainConfig, check_format

REPO = Path(__file__).resolve().parents[1]


def test_configs_round_trip_through_json_with_defaults_filled_in():
    data = DataConfig.from_dict({"dataset": "binarized-mnist"})
    assert data == DataConfig("binarized-mnist", None, 0) and data.binary and data.eval_binarize is None
    assert DataConfig.from_dict(json.loads(json.dumps(data.to_dict()))) == data
    assert DataConfig(dataset="digits", binarize="dynamic").eval_binarize == "static"
    assert not DataConfig(dataset="digits").binary
    train = TrainConfig(objective="iwae", particles=5)
    assert TrainConfig.from_dict(train.to_dict()) == train and train.to_dict()["lr"] == 1e-3
    model = ModelConfig.from_dict({"model": "cvae", "z_dim": 8, "num_classes": 10})  # kind-specific keys left out
    assert model.z_dim == 8 and model.hidden_dims == [400] and not hasattr(model, "num_classes")


@pytest.mark.parametrize(
    "cls, obj, says",
    [
        (ModelConfig, {"z_dim": 0}, "model.z_dim must be a positive integer, got 0"),
        (ModelConfig, {"z_dim": True}, "model.z_dim must be a positive integer, got true"),
        (ModelConfig, {"image_shape": [28, 28]}, "model.image_shape must be a list of 3 positive integers"),
        (ModelConfig, {"scale": -1.0}, "model.scale must be a positive number or null, got -1.0"),
        (DataConfig, {"seed": "0"}, 'data.seed must be an integer, got "0"'),
        (TrainConfig, {"lr": float("nan")}, "train.lr must be a positive number, got NaN"),
        (TrainConfig, {"batch_size": 2.0}, "train.batch_size must be a positive integer, got 2.0"),
    ],
)
def test_a_stored_setting_of_the_wrong_type_is_named(cls, obj, says):
    prefix = {ModelConfig: "model.", DataConfig: "data.", TrainConfig: "train."}[cls]
    with pytest.raises(ConfigError) as e:
        cls.from_dict(obj, "run.json", prefix)
    assert str(e.value) == f"run.json: {says}" or says in str(e.value), str(e.value)


def test_the_format_version_is_checked():
    assert check_format({"format": FORMAT}, "run.json") == FORMAT
    assert check_format({}, "run.json") == 0  # written before the key existed: read as format 1
    with pytest.raises(
        ConfigError, match=f"format {FORMAT + 1}, written by a newer pyro-vae; this one reads formats up to {FORMAT}"
    ):
        check_format({"format": FORMAT + 1}, "run.json")
    assert FORMAT == 3  # one TrainConfig under "train" (formats 0 to 2: also "options"); formats 0 and 1: ``posterior``


def _as_format_2(run_dir, format=2):
    """Rewrite a run folder's run.json as formats 1 and 2 wrote it: eight training settings
    under "train", every ``pyro-vae train`` option under "options", no label settings in "data"."""
    from pyro_vae.cli.resume import options_of

    run = json.loads((run_dir / "run.json").read_text())
    options = options_of(run)
    options.update(download=False, no_progress=True, ddp_timeout=300.0)
    old_train = {
        k: run["train"][k]
        for k in ("objective", "particles", "lr", "batch_size", "epochs", "seed", "device", "clip_norm")
    }
    old = dict(
        run,
        format=format,
        train=old_train,
        options=options,
        data={k: run["data"][k] for k in ("dataset", "binarize", "seed")},
    )
    old.pop("checkpoint_every", None)
    (run_dir / "run.json").write_text(json.dumps(old))
    return run


def _as_format_1(run_dir):
    """Rewrite a run folder as format 1 wrote it: the guide's weights named ``posterior.*``."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    legacy = {k.replace("q.", "posterior.", 1) if k.startswith("q.") else k: v for k, v in state["model"].items()}
    assert legacy != state["model"]
    state["model"] = legacy
    if isinstance(state.get("best"), dict):
        state["best"]["model"] = dict(legacy)
    torch.save(state, run_dir / "checkpoint.pt")
    _as_format_2(run_dir, format=1)
    return legacy


def test_a_format_1_run_loads_and_resumes_with_its_weights_renamed(run_copy, tmp_path):
    legacy = _as_format_1(run_copy)
    model, run = load_run(run_copy, weights="raw")
    assert run["format"] == FORMAT and "options" not in run  # read through the migration
    weights = model.state_dict()
    for k, v in legacy.items():
        assert torch.equal(weights[k.replace("posterior.", "q.", 1)], v), k
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run_copy / "run.json").read_text())["format"] == FORMAT
    assert all(
        not k.startswith("posterior.") for k in torch.load(run_copy / "checkpoint.pt", weights_only=True)["model"]
    )


def test_a_run_json_without_a_format_version_still_loads(run_copy, tmp_path):
    run = _as_format_2(run_copy, format=0)
    old = json.loads((run_copy / "run.json").read_text())
    del old["format"]
    (run_copy / "run.json").write_text(json.dumps(old))
    model, stored = load_run(run_copy)
    assert stored["format"] == FORMAT and stored["train"] == run["train"] and model.z_dim == run["model"]["z_dim"]
    assert main(["sample", str(run_copy), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize("name", ["vae-recipe", "iwae5", "iwae5-flow"])
def test_the_committed_runs_load(name):
    run_dir = REPO / "results" / "runs" / name
    if not (run_dir / "checkpoint.pt").is_file():
        pytest.fail(f"{run_dir} is missing: the likelihood table's runs are committed")
    model, run = load_run(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["format"] == 1
    assert run["format"] == FORMAT and model.z_dim == 50 and run["best"]["epoch"] >= 1
    assert TrainConfig.from_dict(run["train"]).ema_decay == 0.999 and run["train"]["keep_best"]
    best = torch.load(run_dir / "checkpoint.pt", weights_only=True)["best"]["model"]  # format 1: posterior.*
    weights = model.state_dict()
    assert any(k.startswith("posterior.") for k in best)
    assert all(torch.equal(weights[k.replace("posterior.", "q.", 1)], v) for k, v in best.items())


def test_a_format_2_run_reads_as_the_same_settings_and_resumes_bit_identically(run_copy, tmp_path):
    """Format 2 kept eight settings under "train" and the rest under "options": the
    migration gives back the whole TrainConfig, and a resume of the old folder ends where
    one of the new folder ends."""
    import shutil

    new = tmp_path / "new"
    shutil.copytree(run_copy, new)
    written = _as_format_2(run_copy)
    _, run = load_run(run_copy)
    assert run["train"] == written["train"] and run["data"] == written["data"] and run["format"] == FORMAT
    for d in (run_copy, new):
        assert main(["train", "--resume", str(d), "--epochs", "2", "--no-progress"]) == 0
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (run_copy, new))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads((run_copy / "run.json").read_text())["train"] == dict(written["train"], epochs=2)


@pytest.mark.parametrize(
    "name, train, data",
    [
        (
            "hvae-vamp",
            dict(
                lr_schedule="cosine",
                schedule_epochs=300,
                kl_warmup=10.0,
                ema_decay=0.999,
                keep_best=True,
                fused=True,
                epochs=300,
                batch_size=256,
            ),
            dict(dataset="binarized-mnist", labels=None),
        ),
        (
            "ssvae-100",
            dict(keep_best=False, epochs=80, batch_size=100, ema_decay=None),
            dict(dataset="mnist10k", binarize="dynamic", labels=100, label_seed=0, labelled_every=1),
        ),
    ],
)
def test_the_committed_format_2_runs_read_as_their_options_said(name, train, data):
    run_dir = REPO / "results" / "runs" / name
    stored = json.loads((run_dir / "run.json").read_text())
    assert stored["format"] == 2
    _, run = load_run(run_dir)
    assert "options" not in run and run["format"] == FORMAT
    assert {k: run["train"][k] for k in train} == train
    assert {k: run["data"].get(k) for k in data} == data
