"""Data files that are subtly wrong are refused, naming the file and the line (or the
IDX header field), instead of being read as wrong pixels or failing with a bare
assertion; a split that a data set does not have is refused, not replaced by another."""

import gzip
import struct
import tempfile

import numpy as np
import pytest
import torch
from run_helpers import exit_code

from pyro_vae import data
from pyro_vae.cli import main
from pyro_vae.data import DataError, load_dataset, read_amat

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 784


def line(values):
    return " ".join(str(v) for v in values) + "\n"


def good_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 2, size=(n, DIM))
    return rows, "".join(line(r) for r in rows)


# ---- .amat -------------------------------------------------------------------------------
def test_a_long_line_followed_by_a_short_one_is_refused_with_the_line(tmp_path):
    # 785 + 783 values: the total is right for two lines, each line is wrong
    rows, _ = good_lines(3)
    text = line(rows[0]) + line(list(rows[1]) + [1]) + line(rows[2][:-1])
    (tmp_path / "x.amat").write_text(text)
    with pytest.raises(DataError, match=r"x\.amat: line 2 has 785 values, expected 784"):
        read_amat(tmp_path / "x.amat")


def test_a_trailing_blank_line_is_ignored_and_other_valid_layouts_read(tmp_path):
    rows, text = good_lines(3)
    expected = torch.tensor(rows, dtype=torch.float32)
    for tail in ("\n", "\n\n", "   \n", "\r\n"):
        (tmp_path / "x.amat").write_text(text + tail)
        assert torch.equal(read_amat(tmp_path / "x.amat"), expected), repr(tail)
    # Windows line ends, no newline after the last line, a double space: the general
    # path reads what the fast path for the usual layout reads
    (tmp_path / "usual.amat").write_text(text)
    (tmp_path / "crlf.amat").write_bytes(text.replace("\n", "\r\n").encode())
    (tmp_path / "nolast.amat").write_text(text[:-1])
    (tmp_path / "spaces.amat").write_text(text.replace(" ", "  ", 1))
    for name in ("usual.amat", "crlf.amat", "nolast.amat", "spaces.amat"):
        assert torch.equal(read_amat(tmp_path / name), expected), name


def test_a_blank_line_between_images_is_refused_with_its_number(tmp_path):
    rows, _ = good_lines(3)
    (tmp_path / "x.amat").write_text(line(rows[0]) + "\n" + line(rows[1]) + line(rows[2]))
    with pytest.raises(DataError, match=r"x\.amat: line 2 is blank, expected 784"):
        read_amat(tmp_path / "x.amat")


@pytest.mark.parametrize("bad", ["2", "0.5", "11", "-1", "x"])
def test_a_value_other_than_0_or_1_names_the_line_and_the_value(tmp_path, bad):
    rows, _ = good_lines(4)
    third = line(rows[2]).split()
    third[100] = bad
    text = line(rows[0]) + line(rows[1]) + " ".join(third) + "\n" + line(rows[3])
    (tmp_path / "x.amat").write_text(text)
    with pytest.raises(DataError, match=rf"x\.amat: line 3 holds '{bad}', a value other than 0 or 1"):
        read_amat(tmp_path / "x.amat")


def test_an_amat_of_blank_lines_only_is_refused(tmp_path):
    (tmp_path / "x.amat").write_text("\n\n")
    with pytest.raises(DataError, match="holds no values"):
        read_amat(tmp_path / "x.amat")


def test_the_cli_names_the_line_of_a_bad_amat_and_writes_nothing(tmp_path, capsys):
    rows, text = good_lines(4)
    root = tmp_path / "data" / "binarized_mnist"
    root.mkdir(parents=True)
    (root / "binarized_mnist_train.amat").write_text(line(rows[0]) + line(list(rows[1]) + [0]) + line(rows[2][1:]))
    (root / "binarized_mnist_valid.amat").write_text(text)
    out = tmp_path / "run"
    code = exit_code(
        [
            "train",
            "--dataset",
            "binarized-mnist",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--hidden",
            "16",
            "--z-dim",
            "4",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "binarized_mnist_train.amat: line 2 has 785 values" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---- IDX ---------------------------------------------------------------------------------
def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return head + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist10k_root(tmp_path, images=None, labels=None):
    raw = tmp_path / "mnist" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 2500  # mnist10k keeps 2,000 for validation
    images = idx_bytes(rng.integers(0, 256, size=(n, 28, 28))) if images is None else images
    labels = idx_bytes(rng.integers(0, 10, size=n)) if labels is None else labels
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return tmp_path


def test_an_idx_file_with_a_bad_magic_number_is_named(tmp_path):
    labels = idx_bytes(np.zeros(2500), magic=b"\x08\x00\x08\x01")
    root = mnist10k_root(tmp_path, labels=labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: bad IDX magic number 0x08000801"):
        load_dataset("mnist10k", "train", root)


def test_an_idx_file_with_the_wrong_number_of_dimensions_is_named(tmp_path):
    root = mnist10k_root(tmp_path, labels=idx_bytes(np.zeros((2500, 1))))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: the IDX header says 2 dimensions, expected 1"):
        load_dataset("mnist10k", "train", root)


@pytest.mark.parametrize("cut", [2, 9])
def test_a_truncated_idx_header_is_named(tmp_path, cut):
    full = idx_bytes(np.zeros((2500, 28, 28)))
    root = mnist10k_root(tmp_path, images=full[:cut])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: the IDX header is truncated"):
        load_dataset("mnist10k", "train", root)


def test_idx_data_shorter_or_longer_than_its_header_says_is_named(tmp_path):
    full = idx_bytes(np.zeros((2500, 28, 28)))
    for blob in (full[:-1], full + b"\x00"):
        root = mnist10k_root(tmp_path, images=blob)
        with pytest.raises(
            DataError,
            match=r"t10k-images-idx3-ubyte\.gz: the IDX header gives shape "
            r"\(2500, 28, 28\) \(1960000 bytes of data\)",
        ):
            load_dataset("mnist10k", "train", root)


def test_read_idx_reads_good_files_of_every_element_type(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "x.idx").write_bytes(b"\x00\x00\x0c\x02" + struct.pack(">2I", 2, 3) + values.tobytes())
    assert data.read_idx(tmp_path / "x.idx").tolist() == [[0, 1, 2], [3, 4, 5]]
    root = mnist10k_root(tmp_path)
    train, valid = load_dataset("mnist10k", "train", root), load_dataset("mnist10k", "valid", root)
    assert train.x.shape == (500, 784) and valid.x.shape == (2000, 784)
    assert 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    # a file that is not gzip at all is named too
    (root / "mnist" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is not a valid gzipped IDX file"):
        data.read_idx(root / "mnist" / "raw" / "t10k-images-idx3-ubyte.gz", ndim=3)


def test_the_real_mnist_test_files_read_as_before(shared_data):
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = shared_data / "mnist" / "raw" / "t10k-images-idx3-ubyte.gz"
    ours = data.read_idx(path, ndim=3)
    with tempfile.NamedTemporaryFile(suffix=".idx") as f:  # torchvision reads an uncompressed file
        f.write(gzip.decompress(path.read_bytes()))
        f.flush()
        assert torch.equal(ours, read_sn3_pascalvincent_tensor(f.name, strict=True))


# ---- splits ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits", "mnist10k"])
def test_a_test_split_that_does_not_exist_is_refused(tmp_path, name):
    root = mnist10k_root(tmp_path)
    with pytest.raises(DataError, match=f"{name} has no test split.*use split 'valid'"):
        load_dataset(name, "test", root)
    assert data.splits(name) == ("train", "valid")
    # binarized MNIST has a test file of its own, which split "test" reads
    amat = tmp_path / "binarized_mnist"
    amat.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        (amat / f"binarized_mnist_{split}.amat").write_text(good_lines(3, seed)[1])
    test, valid = load_dataset("binarized-mnist", "test", tmp_path), load_dataset("binarized-mnist", "valid", tmp_path)
    assert test.name == "binarized-mnist/test" and not torch.equal(test.x, valid.x)
    assert data.splits("binarized-mnist") == ("train", "valid", "test")


def test_evaluate_split_test_on_digits_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
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
    capsys.readouterr()
    code = exit_code(["evaluate", str(out), "--split", "test", "-K", "10", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "digits has no test split" in err and "--split valid" in err, err
    assert not (out / "eval_test.json").exists()
