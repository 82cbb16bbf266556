"""The data sets :func:`load_dataset` knows by name, from the data folder.

Names understood by :func:`load_dataset`:

==================  ==============================================================
``digits``          scikit-learn's bundled 8×8 digits (1,797 labelled images, values
                    0..16 scaled to [0, 1]); works offline anywhere. Split with a fixed
                    seed: 1,497 train / 300 valid; no test split.
``binarized-mnist`` static binarized MNIST (Larochelle & Murray 2011), the
                    ``binarized_mnist_{train,valid,test}.amat`` text files, from
                    ``root`` or ``root/binarized_mnist``.
``mnist``           MNIST through torchvision (60k train / 10k test), grey-scale in
                    [0, 1]; ``valid`` is the official test split.
``fashion-mnist``   Fashion-MNIST through torchvision, likewise.
``mnist10k``        the 10,000 labelled MNIST *test* images alone (``mnist/raw/t10k-*``
                    IDX files, the only labelled MNIST available offline here), split
                    with a fixed seed into 8,000 train / 2,000 valid; no test split.
==================  ==============================================================

The data folder ``root`` comes from the argument or the ``PYRO_VAE_DATA`` environment
variable (default ``./data``). Nothing is downloaded unless ``download=True``.
"""

import os
from pathlib import Path

import torch

from .files import download_file, read_amat, read_idx
from .images import DataError, ImageData, binarize_static

BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
DATASETS = ("digits", "binarized-mnist", "mnist", "fashion-mnist", "mnist10k")
BINARIZE_MODES = (None, "none", "static", "dynamic")


def data_root(root=None):
    """The data folder: ``root``, else ``$PYRO_VAE_DATA``, else ``./data``."""
    return Path(root or os.environ.get("PYRO_VAE_DATA") or "data")


def _split(n, n_valid, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_valid:], perm[:n_valid]


def _load_digits(split, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    train, valid = _split(len(x), 300, seed=12345)
    idx = train if split == "train" else valid
    return x[idx], y[idx], (1, 8, 8)


def _find_binarized_mnist(root, split, download):
    names = [f"binarized_mnist_{split}.amat"]
    candidates = [root / "binarized_mnist" / names[0], root / names[0]]
    for c in candidates:
        if c.is_file():
            return c
    if download:
        dest = candidates[0]
        download_file(BINARIZED_MNIST_URL.format(split), dest)
        return dest
    raise DataError(
        f"binarized MNIST split {split!r} not found: put binarized_mnist_{split}.amat in "
        f"{root / 'binarized_mnist'} (or {root}), set PYRO_VAE_DATA to the folder that holds it, "
        "or pass download=True (CLI --download) on a machine with network"
    )


def _load_torchvision(name, root, split, download):
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as e:
        hint = (
            " Offline, the 10,000 labelled MNIST test images in mnist/raw serve as dataset 'mnist10k'."
            if name == "mnist"
            else ""
        )
        raise DataError(
            f"{name} not found under {root} ({e}). Pass download=True (CLI --download) on a machine "
            f"with network, or put torchvision's {cls.__name__}/raw files under {root}.{hint}"
        ) from None
    x = ds.data.reshape(len(ds.data), -1).to(torch.float32) / 255.0
    return x, ds.targets.to(torch.int64), (1, 28, 28)


def _load_mnist10k(root, split):
    raw = root / "mnist" / "raw"
    files = [raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"mnist10k needs the MNIST test files {', '.join(f.name for f in files)} in {raw}; "
            f"missing: {', '.join(missing)}"
        )
    images = read_idx(files[0], ndim=3)
    labels = read_idx(files[1], ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"{files[0]}: expected (N, 28, 28) images with N labels, got {tuple(images.shape)} and {len(labels)} labels"
        )
    x = images.reshape(len(images), -1).to(torch.float32) / 255.0
    train, valid = _split(len(x), 2000, seed=12345)
    idx = train if split == "train" else valid
    return x[idx], labels.to(torch.int64)[idx], (1, 28, 28)


#: The data sets without a held-out test split: their ``valid`` split is all there is
#: besides ``train``, and ``split="test"`` is refused rather than answered with it.
NO_TEST_SPLIT = {
    "digits": "digits has no test split: its 1,797 images are split into 1,497 train / 300 valid",
    "mnist10k": "mnist10k has no test split: it is the 10,000 MNIST test images alone, split into "
    "8,000 train / 2,000 valid",
}


def splits(name):
    """The splits data set ``name`` has: ``("train", "valid")``, plus ``"test"`` where
    one exists (binarized MNIST's own test file; for ``mnist`` and ``fashion-mnist``
    the official test split, which is also their ``valid``)."""
    return ("train", "valid") if name in NO_TEST_SPLIT else ("train", "valid", "test")


def check_split(name, split):
    """Raise :class:`DataError` unless data set ``name`` has split ``split``."""
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}; choose 'train', 'valid' or 'test'")
    if split not in splits(name):
        raise DataError(f"{NO_TEST_SPLIT[name]}; use split 'valid' (CLI --split valid)")


def load_dataset(name="digits", split="train", root=None, binarize=None, seed=0, download=False):
    """Load one split of a data set as :class:`ImageData`.

    :param str name: one of :data:`DATASETS`.
    :param str split: ``"train"``, ``"valid"``, or ``"test"`` where the data set has one
        (:func:`splits`; digits and mnist10k have none and refuse it).
    :param root: the data folder (default ``$PYRO_VAE_DATA`` or ``./data``).
    :param str binarize: None (keep grey levels), ``"static"`` (one Bernoulli draw,
        seeded with ``seed``) or ``"dynamic"`` (a fresh draw for every training batch).
        Validation splits are always binarized statically, so their loss is comparable
        from epoch to epoch. Binarized MNIST is binary already and ignores it.
    :param bool download: fetch missing files (needs network).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    check_split(name, split)
    if binarize == "none":
        binarize = None
    source = {"dataset": name, "binarize": binarize, "seed": seed}
    if binarize not in BINARIZE_MODES:
        raise DataError(f"unknown binarization {binarize!r}; choose 'static', 'dynamic' or none")
    root = data_root(root)
    y = None
    if name == "digits":
        x, y, shape = _load_digits(split)
    elif name == "binarized-mnist":
        x, shape = read_amat(_find_binarized_mnist(root, split, download)), (1, 28, 28)
        binarize = None
    elif name == "mnist10k":
        x, y, shape = _load_mnist10k(root, split)
    else:
        x, y, shape = _load_torchvision(name, root, split, download)
    if binarize == "static" or (binarize == "dynamic" and split != "train"):
        x, binarize = binarize_static(x, seed + (split != "train")), None
    return ImageData(
        x=x,
        y=y,
        image_shape=shape,
        name=f"{name}/{split}",
        binarize=binarize,
        num_classes=10 if y is not None else None,
        source=source,
    )
