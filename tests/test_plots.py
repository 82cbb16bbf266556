"""Figures of the latent space: written, not blank (pixel variance above zero), of the
expected size; and the tensors behind them (quantile grid, manifold, interpolation)."""

import json

import matplotlib.image as mpimg
import pytest
import torch
from run_helpers import exit_code

from pyro_vae import plots
from pyro_vae.cli import main
from pyro_vae.eval.latent import LatentFrame, latent_codes
from pyro_vae.models import build_autoencoder, build_vae

SHAPE = (1, 8, 8)
CELL = 8 * 6 + 2  # save_grid upscales 8×8 digits ×6 (to 48 pixels) and pads by 2


def _png(path):
    """The image as an (H, W, channels) array, checked to be a real picture."""
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(str(path))
    assert img.var() > 0, f"{path.name} is blank"
    return img


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return build_autoencoder(SHAPE, z_dim=2, hidden_dims=(16,)).eval(), build_vae(
        SHAPE, z_dim=3, hidden_dims=(16,)
    ).eval()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(120, 64, generator=g) < 0.3).float()


def test_gaussian_quantile_grid_is_at_normal_quantiles():
    grid = plots.gaussian_quantile_grid(5, 0.05, 0.95)
    z95 = 1.6448536269514722  # Φ⁻¹(0.95)
    assert grid.shape == (25, 2)
    assert grid[12].abs().max() < 1e-6  # the centre of an odd grid is the median, 0
    # first row: largest second coordinate; columns left to right in the first
    assert grid[0].tolist() == pytest.approx([-z95, z95], abs=1e-5)
    assert grid[4].tolist() == pytest.approx([z95, z95], abs=1e-5)
    assert grid[24].tolist() == pytest.approx([z95, -z95], abs=1e-5)
    # Φ(grid) is evenly spaced: p = 0.05, 0.275, 0.5, 0.725, 0.95
    p = torch.distributions.Normal(0.0, 1.0).cdf(grid[:5, 0])
    assert torch.allclose(p, torch.linspace(0.05, 0.95, 5), atol=1e-5)
    with pytest.raises(ValueError, match="quantile levels"):
        plots.gaussian_quantile_grid(5, 0.0, 0.9)


def test_manifold_decodes_the_grid_in_the_models_frame(models, x, monkeypatch):
    ae, _ = models
    codes = latent_codes(ae, x)
    frame = LatentFrame.fit(codes)
    seen = {}
    monkeypatch.setattr(ae, "decode", lambda z: seen.setdefault("z", z))
    plots.decode_manifold(ae, 4, codes)
    expected = frame.to_latent(plots.gaussian_quantile_grid(4))
    assert torch.allclose(seen["z"], expected, atol=1e-5)


def test_manifold_for_more_than_two_latent_dimensions_lies_in_the_principal_plane(models, x):
    _, vae = models
    codes = latent_codes(vae, x)
    images = plots.decode_manifold(vae, 3, codes)
    assert images.shape == (9, 64)
    assert ((images >= 0) & (images <= 1)).all()


def test_interpolation_ends_at_the_inputs_codes(models, x):
    _, vae = models
    path = plots.interpolate(vae, x[0], x[1], steps=5)
    assert path.shape == (5, 64)
    za, zb = vae.encode(x[:2]).mean
    assert torch.allclose(path[0], vae.decode(za), atol=1e-6)
    assert torch.allclose(path[-1], vae.decode(zb), atol=1e-6)
    assert torch.allclose(path[2], vae.decode((za + zb) / 2), atol=1e-6)
    assert plots.interpolate(vae, x[:3], x[3:6], steps=4).shape == (3, 4, 64)
    with pytest.raises(ValueError, match="steps >= 2"):
        plots.interpolate(vae, x[0], x[1], steps=1)


def test_project_2d_says_when_it_used_pca():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(300, 4, generator=g) * torch.tensor([5.0, 2.0, 0.1, 0.1])
    proj, (other,), note = plots.project_2d(codes, codes[:10])
    assert proj.shape == (300, 2) and other.shape == (10, 2)
    assert torch.allclose(proj[:10], other)
    assert note.startswith("PCA of 4-D codes")
    assert proj[:, 0].var() > proj[:, 1].var() > 1  # the two large axes are kept
    flat, _, note2 = plots.project_2d(codes[:, :2])
    assert note2 == "" and torch.equal(flat, codes[:, :2])


def test_latent_maps_figure(models, x, tmp_path):
    ae, vae = models
    labels = torch.arange(len(x)) % 10
    panels = [plots.latent_map_panel(ae, x, labels, draws=300), plots.latent_map_panel(vae, x, labels)]
    assert panels[0]["dead"].shape == (300,)
    path = plots.plot_latent_maps(panels, tmp_path / "maps.png")
    img = _png(path)
    assert img.shape[:2] == (round(4.6 * 110), round((4.2 * 2 + 0.9) * 110))


def test_grid_pngs_have_the_expected_size(models, x, tmp_path):
    ae, vae = models
    img = _png(plots.save_manifold(ae, SHAPE, tmp_path / "m.png", n=6, codes=latent_codes(ae, x)))
    assert img.shape[:2] == (6 * CELL + 2, 6 * CELL + 2)
    img = _png(plots.save_interpolations(vae, x[:3], x[3:6], SHAPE, tmp_path / "i.png", steps=7))
    assert img.shape[:2] == (3 * CELL + 2, (7 + 2) * CELL + 2)
    img = _png(plots.save_samples(vae, SHAPE, tmp_path / "s.png", n=16))
    assert img.shape[:2] == (4 * CELL + 2, 4 * CELL + 2)
    img = _png(plots.save_reconstructions(ae, x[:16], SHAPE, tmp_path / "r.png"))
    assert img.shape[:2] == (4 * CELL + 2, 8 * CELL + 2)  # 2 rows of inputs, 2 of reconstructions
    img = _png(plots.plot_image_grids({"a": ae.sample(9), "b": vae.sample(9)}, SHAPE, tmp_path / "g.png"))
    assert img.shape[:2] == (round((4.3 + 0.5) * 110), round(4.3 * 2 * 110))  # square grids: 4.3 in + the title


def test_cli_plot_draws_everything_from_saved_runs(tmp_path, capsys):
    runs = {}
    for kind in ("ae", "vae"):
        runs[kind] = tmp_path / kind
        assert (
            main(
                [
                    "train",
                    "--model",
                    kind,
                    "--dataset",
                    "digits",
                    "--binarize",
                    "dynamic",
                    "--z-dim",
                    "2",
                    "--hidden",
                    "32",
                    "--epochs",
                    "2",
                    "--out",
                    str(runs[kind]),
                    "--no-progress",
                ]
            )
            == 0
        )
    out = tmp_path / "plots"
    rc = main(
        [
            "plot",
            str(runs["ae"]),
            str(runs["vae"]),
            "--out",
            str(out),
            "--draws",
            "300",
            "-n",
            "16",
            "--grid",
            "5",
            "--classifier-epochs",
            "2",
        ]
    )
    assert rc == 0
    for name in ["latent_map", "manifolds", "samples"] + [
        f"{k}_{f}" for k in runs for f in ("samples", "manifold", "reconstructions", "interpolations")
    ]:
        _png(out / f"{name}.png")
    assert _png(out / "ae_manifold.png").shape[:2] == (5 * CELL + 2, 5 * CELL + 2)
    reports = json.loads((out / "dead_zones.json").read_text())
    assert set(reports) == {"ae", "vae"}
    assert reports["ae"]["standardized"] and not reports["vae"]["standardized"]
    assert 0 <= reports["vae"]["share"] <= 1 and "confidence" in reports["vae"]
    printed = capsys.readouterr().out
    assert "| ae | 2 | standardized codes |" in printed
    # the classifier is kept and reused, not retrained
    assert (out / "classifier.pt").is_file()
    assert (
        main(
            [
                "plot",
                str(runs["vae"]),
                "--out",
                str(out),
                "--draws",
                "100",
                "-n",
                "4",
                "--grid",
                "3",
                "--classifier-epochs",
                "2",
            ]
        )
        == 0
    )
    assert "classifier: " + str(out / "classifier.pt") in capsys.readouterr().out


def test_cli_plot_bad_input_is_named(tmp_path, capsys):
    assert exit_code(["plot", str(tmp_path / "nowhere")]) == 2
    assert "run.json" in capsys.readouterr().err
    assert exit_code(["plot", str(tmp_path), "--steps", "1"]) == 2
    assert "argument --steps: must be an integer ≥ 2" in capsys.readouterr().err


def test_the_loss_axis_shows_where_the_curves_settle_not_the_first_epochs():
    train = [373.0, 120.0] + [100.0 - i / 10 for i in range(98)]  # a first epoch far above the rest
    valid = [400.0] + [101.0 - i / 20 for i in range(99)]
    low, high = plots.loss_axis_limits(train, valid)
    assert low < min(train) and high < 120.0  # the first 5 epochs are off the axis
    settled = [v for v in train[5:] + valid[5:]]
    assert low <= min(settled) and high >= max(settled)
    assert plots.loss_axis_limits([5.0, 4.0]) is None  # too short to choose


def test_the_loss_curves_mark_the_best_validation_epoch(tmp_path):
    history = {
        "train_loss": [300.0, 99.0, 98.0, 97.5, 97.0],
        "valid_loss": [310.0, 100.0, 98.5, 99.0, 99.5],
        "objective": "-ELBO",
    }
    path = plots.plot_losses(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
