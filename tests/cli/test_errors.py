"""Bad input: each case is a clear error naming the problem, exit status 2, and nothing
written (no run folder created, an existing run left byte for byte)."""

import gzip

import pytest
import torch
from run_helpers import fails, idx_bytes

from pyro_vae import build_vae
from pyro_vae.cli import main
from pyro_vae.data import DataError, ImageData, check_labels, load_dataset
from pyro_vae.train.trainer import Trainer

TINY = ["--hidden", "16", "--z-dim", "4", "--no-progress"]
GOOD_LINE = "0 1 " * 391 + "0 1\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder):
    """Every file of a folder with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch digits run: (folder, its files)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--epochs", "1", "--binarize", "dynamic", "--out", str(out), *TINY]) == 0
    return out, snapshot(out)


# ---- invalid options ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value",
    [
        ("--particles", "-1"),
        ("--batch-size", "0"),
        ("--epochs", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--z-dim", "0"),
        ("--checkpoint-every", "0"),
        ("--clip-norm", "-1"),
    ],
)
def test_invalid_options_are_named_and_nothing_is_written(tmp_path, capsys, option, value):
    out = tmp_path / "run"
    err = fails(["train", *TINY, option, value, "--out", str(out)], capsys, option)
    assert value in err
    assert not out.exists()


def test_an_option_of_the_wrong_type_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--batch-size", "many", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- output folders ------------------------------------------------------------------------
def test_an_out_folder_holding_a_run_is_refused_unless_overwrite(finished_run, capsys):
    out, files = finished_run
    fails(["train", "--epochs", "1", "--out", str(out), *TINY], capsys, "already holds a run", "--overwrite")
    assert snapshot(out) == files


def test_a_non_empty_folder_without_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    fails(["train", "--out", str(tmp_path), *TINY], capsys, "not empty and holds no run")
    assert snapshot(tmp_path) == {tmp_path.joinpath("thesis.tex").relative_to(tmp_path): b"precious"}


def test_a_failed_start_with_overwrite_leaves_the_old_run(finished_run, tmp_path, capsys):
    out, files = finished_run
    fails(
        ["train", "--dataset", "binarized-mnist", "--data", str(tmp_path), "--out", str(out), "--overwrite", *TINY],
        capsys,
        "binarized_mnist_train.amat",
    )
    assert snapshot(out) == files


# ---- resume --------------------------------------------------------------------------------
def test_resume_with_options_that_differ_from_the_run(finished_run, capsys):
    out, files = finished_run
    fails(
        ["train", "--resume", str(out), "--epochs", "2", "--lr", "0.01", "--z-dim", "8", "--no-progress"],
        capsys,
        "differ from the run's",
        "--lr 0.01 (the run has 0.001)",
        "--z-dim 8 (the run has 4)",
    )
    fails(
        ["train", "--resume", str(out), "--epochs", "2", "--objective", "meanfield"],
        capsys,
        "--objective 'meanfield' (the run has 'elbo')",
    )
    fails(["train", "--resume", str(out), "--out", str(out.parent / "elsewhere")], capsys, "drop --out")
    fails(["train", "--resume", str(out), "--no-progress"], capsys, "already trained 1 epochs", "--epochs N")
    assert snapshot(out) == files


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    fails(["train", "--resume", str(tmp_path)], capsys, "no run.json there")


def test_resume_continues_with_more_epochs_and_the_same_options_given_again(finished_run, tmp_path, capsys):
    out, files = finished_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name, data in files.items():
        (copy / name).write_bytes(data)
    assert (
        main(["train", "--resume", str(copy), "--epochs", "2", "--lr", "0.001", "--hidden", "16", "--no-progress"]) == 0
    )
    assert "resuming after step 12 (epoch 2, batch 0)" in capsys.readouterr().out
    from pyro_vae.runs import load_checkpoint

    assert load_checkpoint(copy / "checkpoint.pt")["epoch"] == 2


# ---- data files ----------------------------------------------------------------------------
def amat_folder(tmp_path, train_text, valid_text=GOOD_LINE * 4):
    root = tmp_path / "data"
    (root / "binarized_mnist").mkdir(parents=True)
    (root / "binarized_mnist" / "binarized_mnist_train.amat").write_text(train_text)
    (root / "binarized_mnist" / "binarized_mnist_valid.amat").write_text(valid_text)
    return root


def test_missing_data_file(tmp_path, capsys):
    root = amat_folder(tmp_path, GOOD_LINE * 4)
    (root / "binarized_mnist" / "binarized_mnist_valid.amat").unlink()
    fails(
        ["train", "--dataset", "binarized-mnist", "--data", str(root), "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "binarized_mnist_valid.amat",
        "not found",
    )
    assert not (tmp_path / "run").exists()


def test_truncated_amat_line(tmp_path, capsys):
    root = amat_folder(tmp_path, GOOD_LINE * 3 + "0 1 0 1\n" + GOOD_LINE)
    fails(
        ["train", "--dataset", "binarized-mnist", "--data", str(root), "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "binarized_mnist_train.amat: line 4 has 4 values, expected 784",
        "truncated",
    )
    assert not (tmp_path / "run").exists()


def test_amat_cut_in_the_middle_of_a_line(tmp_path):
    root = amat_folder(tmp_path, (GOOD_LINE * 3)[:-100])
    with pytest.raises(DataError, match="line 3 has .* values, expected 784"):
        load_dataset("binarized-mnist", "train", root=root)


def mnist_raw(tmp_path, images, labels):
    raw = tmp_path / "mnist" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    return tmp_path


def test_corrupt_gz(tmp_path, capsys):
    labels = gzip.compress(idx_bytes(torch.zeros(10, dtype=torch.uint8)))
    images = gzip.compress(idx_bytes(torch.zeros(10, 28, 28, dtype=torch.uint8)))
    root = mnist_raw(tmp_path, images[: len(images) // 2], labels)  # a download cut short
    fails(
        ["train", "--dataset", "mnist10k", "--data", str(root), "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "t10k-images-idx3-ubyte.gz is not a valid gzipped IDX file",
    )
    assert not (tmp_path / "run").exists()
    (root / "mnist" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="not a valid gzipped IDX"):
        load_dataset("mnist10k", "train", root=root)


def test_wrong_image_size(tmp_path, capsys):
    labels = gzip.compress(idx_bytes(torch.zeros(10, dtype=torch.uint8)))
    images = gzip.compress(idx_bytes(torch.zeros(10, 27, 27, dtype=torch.uint8)))
    root = mnist_raw(tmp_path, images, labels)
    fails(
        ["train", "--dataset", "mnist10k", "--data", str(root), "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "expected (N, 28, 28) images",
        "(10, 27, 27)",
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=r"expected images of shape \(N, 784\)"):
        ImageData(x=torch.zeros(5, 64), image_shape=(1, 28, 28))
    # data of another size than the model's
    digits = load_dataset("digits", "train", binarize="static")
    with pytest.raises(ValueError, match=r"the images have 64 values .* built for 784 \(image shape \(1, 28, 28\)\)"):
        Trainer(build_vae((1, 28, 28), z_dim=4, hidden_dims=(16,)), digits)


# ---- data values ---------------------------------------------------------------------------
def test_non_binary_data_for_a_bernoulli_likelihood(tmp_path, capsys):
    fails(
        ["train", "--likelihood", "bernoulli", "--out", str(tmp_path / "run"), *TINY],
        capsys,
        "digits/train",
        "Bernoulli likelihood needs binary data",
        "--binarize",
    )
    assert not (tmp_path / "run").exists()
    grey = ImageData(x=torch.full((4, 4), 0.5), image_shape=(1, 2, 2), name="grey")
    with pytest.raises(ValueError, match="grey: the Bernoulli likelihood needs binary data"):
        Trainer(build_vae((1, 2, 2), z_dim=2, hidden_dims=(4,)), grey)


def test_grey_levels_outside_0_1_for_binarization():
    with pytest.raises(DataError, match=r"needs grey levels p in \[0, 1\], got values in \[0, 255\]"):
        ImageData(x=torch.tensor([[0.0, 255.0, 3.0, 1.0]]), image_shape=(1, 2, 2), binarize="dynamic")
    data = ImageData(x=torch.tensor([[0.0, 0.5, 0.2, 1.0]]), image_shape=(1, 2, 2), binarize="dynamic")
    data.x = data.x * 255  # changed after the checks of ImageData: the trainer checks again
    with pytest.raises(ValueError, match=r"dynamic binarization .* \[0, 1\]"):
        Trainer(build_vae((1, 2, 2), z_dim=2, hidden_dims=(4,)), data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_the_data(bad):
    x = torch.rand(6, 4)
    x[2, 1] = bad
    with pytest.raises(DataError, match="NaN or inf"):
        ImageData(x=x, image_shape=(1, 2, 2))
    data = ImageData(x=torch.rand(6, 4), image_shape=(1, 2, 2), name="mine")
    data.x[3, 0] = bad  # slipped in after construction
    with pytest.raises(ValueError, match="mine: the data hold 1 NaN or inf values"):
        Trainer(build_vae((1, 2, 2), z_dim=2, hidden_dims=(4,), likelihood="gaussian"), data)


def test_labels_out_of_range_for_a_conditional_model():
    assert torch.equal(check_labels(torch.tensor([0, 9, 3]), 10), torch.tensor([0, 9, 3]))
    with pytest.raises(
        DataError,
        match=r"train: 2 labels are out of range for 10 classes .*0\.\.9; "
        r"the first is 10 at index 1",
    ):
        check_labels(torch.tensor([0, 10, 3, -1]), 10, name="train")
    with pytest.raises(DataError, match="labels must be integers, got dtype torch.float32"):
        check_labels(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(DataError, match=r"labels must have shape \(N,\), got \(2, 2\)"):
        check_labels(torch.zeros(2, 2, dtype=torch.int64), 10)
    with pytest.raises(DataError, match="out of range for 10 classes"):
        ImageData(x=torch.rand(3, 4), y=torch.tensor([1, 2, 12]), image_shape=(1, 2, 2), num_classes=10)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        ImageData(x=torch.rand(3, 4), y=torch.tensor([1, 2]), image_shape=(1, 2, 2), num_classes=10)


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--traced", "--objective", "iwae"], "--traced replays Trace_ELBO's step"),
        (["--traced", "--kl-warmup", "2"], "--traced does not combine with --kl-warmup"),
        (["--traced", "--compile"], "--traced does not combine with --compile"),
        (["--traced", "--binarize", "static", "--guide", "flow", "--objective", "tracegraph"], "--traced replays"),
    ],
)
def test_traced_refuses_what_it_cannot_replay(tmp_path, capsys, argv, said):
    out = tmp_path / "run"
    fails(["train", *TINY, *argv, "--out", str(out)], capsys, said)
    assert not out.exists()
