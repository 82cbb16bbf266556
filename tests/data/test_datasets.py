import gzip
import math

import pytest
import torch

from pyro_vae.data import DataError, ImageData, load_dataset, read_amat


def test_digits_offline_split_and_range():
    train, valid = load_dataset("digits", "train"), load_dataset("digits", "valid")
    assert train.x.shape == (1497, 64) and valid.x.shape == (300, 64)
    assert train.image_shape == (1, 8, 8)
    assert 0 <= train.x.min() and train.x.max() <= 1
    assert set(train.y.unique().tolist()) == set(range(10))
    # the two splits partition scikit-learn's 1,797 images
    from sklearn.datasets import load_digits

    every = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    both = torch.cat([train.x, valid.x])
    assert torch.equal(both.sum(0), every.sum(0)) or torch.allclose(both.sum(0), every.sum(0))


def test_binarization_modes():
    static = load_dataset("digits", "train", binarize="static", seed=1)
    assert set(static.x.unique().tolist()) == {0.0, 1.0}
    again = load_dataset("digits", "train", binarize="static", seed=1)
    assert torch.equal(static.x, again.x)
    dynamic = load_dataset("digits", "train", binarize="dynamic")
    g = torch.Generator().manual_seed(0)
    [(b1, _)] = list(dynamic.batches(2000, shuffle=False, generator=g))
    [(b2, _)] = list(dynamic.batches(2000, shuffle=False, generator=g))
    assert set(b1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(b1, b2)  # a fresh draw each time
    # E[x_b] = x: the draws average to the grey levels (4 sd of a Bernoulli mean of 1497*64 pixels)
    assert abs(b1.mean() - dynamic.x.mean()) < 4 * 0.5 / (1497 * 64) ** 0.5
    # validation splits are always drawn once, so their loss is comparable across epochs
    assert load_dataset("digits", "valid", binarize="dynamic").binarize is None


def test_batches_cover_the_data_once_per_epoch():
    data = load_dataset("digits", "valid")
    seen = torch.cat([x for x, _ in data.batches(64, generator=torch.Generator().manual_seed(0))])
    assert seen.shape == data.x.shape
    assert torch.allclose(seen.sum(0), data.x.sum(0))


def test_binarized_mnist_from_the_shared_folder(shared_data):
    valid = load_dataset("binarized-mnist", "valid", root=shared_data)
    assert valid.x.shape == (10000, 784)
    assert valid.x.mean().item() == pytest.approx(0.1311, abs=1e-4)  # the data README's figure
    assert set(valid.x.unique().tolist()) == {0.0, 1.0}


def test_data_folder_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(shared_data))
    assert len(load_dataset("mnist10k", "valid")) == 2000


def test_mnist10k_split(shared_data):
    train = load_dataset("mnist10k", "train", root=shared_data)
    valid = load_dataset("mnist10k", "valid", root=shared_data)
    assert len(train) == 8000 and len(valid) == 2000
    assert train.image_shape == (1, 28, 28) and 0 <= train.x.min() and train.x.max() <= 1
    assert set(valid.y.unique().tolist()) == set(range(10))


def test_missing_data_names_the_folder_and_files(tmp_path):
    with pytest.raises(DataError, match=r"binarized_mnist_train\.amat.*" + str(tmp_path)):
        load_dataset("binarized-mnist", "train", root=tmp_path)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist10k", "train", root=tmp_path)
    with pytest.raises(DataError, match="download"):
        load_dataset("mnist", "train", root=tmp_path)


def test_truncated_and_non_binary_amat(tmp_path):
    good = "0 1 " * 391 + "0 1\n"
    (tmp_path / "ok.amat").write_text(good * 3)
    assert read_amat(tmp_path / "ok.amat").shape == (3, 784)
    (tmp_path / "cut.amat").write_text(good * 2 + "0 1 1\n")
    with pytest.raises(DataError, match="line 3 has 3 values"):
        read_amat(tmp_path / "cut.amat")
    (tmp_path / "grey.amat").write_text(good.replace("1", "0.5", 1))
    with pytest.raises(DataError, match="other than 0 or 1"):
        read_amat(tmp_path / "grey.amat")


def test_corrupt_idx_file(tmp_path):
    raw = tmp_path / "mnist" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00" * 20)
    with pytest.raises(DataError, match="not a valid gzipped IDX"):
        load_dataset("mnist10k", "train", root=tmp_path)


def test_shape_and_nan_checks():
    with pytest.raises(DataError, match="expected images of shape"):
        ImageData(x=torch.zeros(3, 10), image_shape=(1, 3, 3))
    with pytest.raises(DataError, match="NaN"):
        ImageData(x=torch.full((2, 9), float("nan")), image_shape=(1, 3, 3))
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="binarization"):
        load_dataset("digits", binarize="sometimes")


def test_static_binarization_is_a_bernoulli_draw_of_the_grey_levels_not_a_threshold():
    grey = load_dataset("digits", "train")
    binary = load_dataset("digits", "train", binarize="static", seed=0)
    assert set(binary.x.unique().tolist()) <= {0.0, 1.0}
    for lo, hi in ((0.1, 0.4), (0.6, 0.9)):
        sel = (grey.x > lo) & (grey.x < hi)
        p, share = grey.x[sel].mean().item(), binary.x[sel].mean().item()
        n = int(sel.sum())
        # a draw x ~ Bernoulli(p): the share of ones is p within 5 standard errors; a threshold at ½
        # would give 0 below it and 1 above it
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (lo, hi, share, p, n)
