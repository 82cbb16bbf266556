"""Data sets, as flat float tensors ``(N, C*H*W)`` with their image shape.

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

import gzip
import math
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
DATASETS = ("digits", "binarized-mnist", "mnist", "fashion-mnist", "mnist10k")
BINARIZE_MODES = (None, "none", "static", "dynamic")


class DataError(ValueError):
    """A data set is missing, corrupt, or unfit for the chosen likelihood."""


@dataclass
class ImageData:
    """A split of an image data set.

    :ivar torch.Tensor x: ``(N, C*H*W)`` float32.
    :ivar torch.Tensor y: ``(N,)`` int64 labels, or None.
    :ivar tuple image_shape: ``(C, H, W)``.
    :ivar str binarize: None, ``"static"`` (x already drawn once) or ``"dynamic"``
        (each batch of :meth:`batches` is a fresh draw x_b ~ Bernoulli(x)).
    """

    x: torch.Tensor
    y: torch.Tensor = None
    image_shape: tuple = (1, 28, 28)
    name: str = ""
    binarize: str = None
    num_classes: int = field(default=None)

    def __post_init__(self):
        if self.x.dim() != 2 or self.x.shape[1] != math.prod(self.image_shape):
            raise DataError(f"{self.name or 'data'}: expected images of shape (N, {math.prod(self.image_shape)}) "
                            f"for image shape {tuple(self.image_shape)}, got {tuple(self.x.shape)}")
        if not torch.isfinite(self.x).all():
            raise DataError(f"{self.name or 'data'}: the images hold NaN or inf values")
        if self.binarize == "dynamic" and (self.x.min() < 0 or self.x.max() > 1):
            raise DataError(f"{self.name or 'data'}: dynamic binarization draws x ~ Bernoulli(p) and needs grey "
                            f"levels p in [0, 1], got values in [{self.x.min():.4g}, {self.x.max():.4g}]")
        if self.y is not None and self.y.shape[0] != self.x.shape[0]:
            raise DataError(f"{self.name or 'data'}: {self.y.shape[0]} labels for {self.x.shape[0]} images")
        if self.y is not None and self.num_classes is not None:
            check_labels(self.y, self.num_classes, name=self.name or "data")

    def __len__(self):
        return self.x.shape[0]

    @property
    def x_dim(self):
        return self.x.shape[1]

    def to(self, device):
        self.x = self.x.to(device)
        if self.y is not None:
            self.y = self.y.to(device)
        return self

    def batches(self, batch_size, shuffle=True, generator=None, drop_last=False):
        """Yield ``(x_batch, y_batch)`` minibatches (``y_batch`` None without labels).

        With ``binarize == "dynamic"`` each batch is a fresh Bernoulli draw of its
        grey levels (the generator makes it reproducible)."""
        n = len(self)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            xb = self.x[idx]
            if self.binarize == "dynamic":
                u = torch.rand(xb.shape, generator=generator).to(xb.device)
                xb = (u < xb).to(xb.dtype)
            yield xb, (self.y[idx] if self.y is not None else None)


def check_labels(y, num_classes, name="labels"):
    """Check class labels for a model with ``num_classes`` classes (a conditional VAE).

    :param torch.Tensor y: labels, shape ``(N,)``, an integer dtype.
    :param int num_classes: K; every label must lie in {0, …, K−1}.
    :param str name: what the labels belong to, for the message.
    :raises DataError: naming the problem (float or bool labels, a wrong shape, a
        label out of range, with how many are and the first one).
    """
    if not torch.is_tensor(y):
        raise DataError(f"{name}: labels must be a tensor, got {type(y).__name__}")
    if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if y.dim() != 1:
        raise DataError(f"{name}: labels must have shape (N,), got {tuple(y.shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"{name}: the number of classes must be a positive integer, got {num_classes!r}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} labels are out of range for {num_classes} classes "
                        f"(labels must lie in 0..{num_classes - 1}; the first is {y[bad][0].item()} "
                        f"at index {int(bad.nonzero()[0, 0])})")
    return y


def data_root(root=None):
    """The data folder: ``root``, else ``$PYRO_VAE_DATA``, else ``./data``."""
    return Path(root or os.environ.get("PYRO_VAE_DATA") or "data")


def _binarize_static(x, seed):
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"binarization draws x ~ Bernoulli(p) and needs grey levels p in [0, 1], "
                        f"got values in [{x.min():.4g}, {x.max():.4g}]")
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(x.shape, generator=g) < x).to(x.dtype)


def _split(n, n_valid, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_valid:], perm[:n_valid]


# ---- readers -----------------------------------------------------------------------------
_AMAT_BYTES = np.zeros(256, dtype=np.uint8)
_AMAT_BYTES[[ord(" "), ord("\t"), ord("\r")]] = 1
_AMAT_BYTES[[ord("0"), ord("1")]] = 2
_AMAT_BYTES[ord("\n")] = 3


def read_amat(path, dim=784):
    """Read an ``.amat`` file of 0/1 values (one image per line) into ``(N, dim)`` float32.

    Every line is checked: it must hold exactly ``dim`` values, each ``0`` or ``1``,
    separated by spaces or tabs. Blank lines at the end of the file are ignored; a
    blank line between images is an error.

    :raises DataError: naming the file and the first bad line (and the value), for a
        missing or empty file, a line with another number of values, or a value other
        than 0 or 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise DataError(f"{path} is empty")
    if raw.size % (2 * dim) == 0:  # the usual layout, "v v ... v\n" on every line: checked in one pass
        rows = raw.reshape(-1, 2 * dim)
        values, gaps = rows[:, 0::2], rows[:, 1::2]
        if (((values == ord("0")) | (values == ord("1"))).all() and (gaps[:, :-1] == ord(" ")).all()
                and (gaps[:, -1] == ord("\n")).all()):
            return torch.from_numpy((values - ord("0")).astype(np.float32))
    ends = np.flatnonzero(raw == ord("\n"))  # the newline ending each line
    if ends.size == 0 or ends[-1] != raw.size - 1:
        ends = np.append(ends, raw.size)  # a last line without a newline

    def line_of(pos):
        return int(np.searchsorted(ends, pos))  # 0-based

    def bad_value(i):
        lo = ends[i - 1] + 1 if i else 0
        text = raw[lo:ends[i]].tobytes().decode("latin-1")
        bad = next(t for t in text.split() if t not in ("0", "1"))
        return DataError(f"{path}: line {i + 1} holds {bad[:20]!r}, a value other than 0 or 1 (an .amat file "
                         "of binarized MNIST holds only 0/1 values)")

    kind = _AMAT_BYTES[raw]  # 0: other, 1: space, 2: digit, 3: newline
    if not kind.all():
        raise bad_value(line_of(int(np.argmin(kind))))
    digit = kind == 2
    adjacent = digit[1:] & digit[:-1]  # "01", "11": one value of several digits
    if adjacent.any():
        raise bad_value(line_of(int(np.argmax(adjacent))))
    line_starts = np.concatenate([[0], ends[:-1] + 1])
    per_line = np.add.reduceat(digit.view(np.uint8), np.minimum(line_starts, raw.size - 1), dtype=np.int64)
    per_line[line_starts >= raw.size] = 0  # an empty last line
    filled = np.flatnonzero(per_line > 0)
    if filled.size == 0:
        raise DataError(f"{path} holds no values")
    n_images = int(filled[-1]) + 1  # blank lines after the last image are ignored
    wrong = np.flatnonzero(per_line[:n_images] != dim)
    if wrong.size:
        i = int(wrong[0])
        count = int(per_line[i])
        what = "is blank" if count == 0 else f"has {count} values"
        raise DataError(f"{path}: line {i + 1} {what}, expected {dim} (the file is truncated or corrupt)")
    values = raw[digit] - ord("0")
    return torch.from_numpy(values.reshape(n_images, dim).astype(np.float32))


#: IDX element types: code → (NumPy big-endian dtype, bytes per element).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, ndim=None):
    """Read a (gzipped, if the name ends in ``.gz``) IDX file into a tensor.

    The header is checked: two zero bytes, a known element type, ``ndim`` dimensions
    (when given), a whole header, and exactly as many data bytes as its sizes call for.

    :raises DataError: naming the file and the fault."""
    import zlib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a valid gzipped IDX file ({type(e).__name__}: {e})") from None
    if len(data) < 4:
        raise DataError(f"{path}: the IDX header is truncated ({len(data)} bytes, at least 4 needed)")
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise DataError(f"{path}: bad IDX magic number 0x{magic.hex()} (expected 0x0000TTNN: a known element "
                        "type TT and the number of dimensions NN); the file is corrupt or not an IDX file")
    dims = magic[3]
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: the IDX header says {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{path}: the IDX header is truncated ({len(data)} bytes, {header} needed "
                        f"for {dims} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    need = math.prod(shape) * dtype.itemsize
    if len(data) - header != need:
        raise DataError(f"{path}: the IDX header gives shape {shape} ({need} bytes of data), but the file holds "
                        f"{len(data) - header} bytes after it (truncated or corrupt)")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


def _read_idx_gz(path, ndim=None):
    """Read a gzipped IDX file (:func:`read_idx`)."""
    return read_idx(path, ndim)


def _download(url, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({e}); without network, put the file at {dest}") from None
    os.replace(tmp, dest)


# ---- loaders -----------------------------------------------------------------------------
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
        _download(BINARIZED_MNIST_URL.format(split), dest)
        return dest
    raise DataError(
        f"binarized MNIST split {split!r} not found: put binarized_mnist_{split}.amat in "
        f"{root / 'binarized_mnist'} (or {root}), set PYRO_VAE_DATA to the folder that holds it, "
        "or pass download=True (CLI --download) on a machine with network")


def _load_torchvision(name, root, split, download):
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError as e:
        hint = (" Offline, the 10,000 labelled MNIST test images in mnist/raw serve as dataset 'mnist10k'."
                if name == "mnist" else "")
        raise DataError(f"{name} not found under {root} ({e}). Pass download=True (CLI --download) on a machine "
                        f"with network, or put torchvision's {cls.__name__}/raw files under {root}.{hint}") from None
    x = ds.data.reshape(len(ds.data), -1).to(torch.float32) / 255.0
    return x, ds.targets.to(torch.int64), (1, 28, 28)


def _load_mnist10k(root, split):
    raw = root / "mnist" / "raw"
    files = [raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"mnist10k needs the MNIST test files {', '.join(f.name for f in files)} in {raw}; "
                        f"missing: {', '.join(missing)}")
    images = _read_idx_gz(files[0], ndim=3)
    labels = _read_idx_gz(files[1], ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{files[0]}: expected (N, 28, 28) images with N labels, got "
                        f"{tuple(images.shape)} and {len(labels)} labels")
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
        x, binarize = _binarize_static(x, seed + (split != "train")), None
    return ImageData(x=x, y=y, image_shape=shape, name=f"{name}/{split}", binarize=binarize,
                     num_classes=10 if y is not None else None)


# ======================================================================================
# Conditioning data for the conditional VAE: one-hot labels, quadrant masks
# ======================================================================================
def one_hot(labels, num_classes, dtype=torch.float32):
    """One-hot codes e_c of class labels: ``(batch,)`` integers in {0, …, K−1} →
    ``(batch, K)`` with ``out[n, c_n] = 1`` and zeros elsewhere.

    :param labels: integer labels (tensor, sequence or int).
    :param int num_classes: K.
    :raises DataError: (a ValueError) naming the problem, from :func:`check_labels`, for
        float labels, a wrong shape, or a label outside 0..K−1.
    """
    if not torch.is_tensor(labels):
        labels = torch.as_tensor(labels)
    check_labels(labels, num_classes, name="class labels c")
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


#: The quadrants given as input for 1, 2 or 3 quadrants, as in Pyro's CVAE example
#: (Sohn et al. 2015): the rest of the image is to be predicted.
QUADRANT_INPUTS = {
    1: ("bottom-left",),
    2: ("top-left", "bottom-left"),
    3: ("top-left", "top-right", "bottom-left"),
}


def quadrant_mask(num_quadrants, image_shape=(1, 28, 28)):
    """The observed-pixel mask m of the quadrant-completion task, flat ``(C*H*W,)``
    bool: True on the given quadrants (:data:`QUADRANT_INPUTS`), False on the pixels to
    predict. Quadrants split rows and columns at ``H // 2`` and ``W // 2``.

    :param int num_quadrants: 1, 2 or 3.
    """
    if num_quadrants not in QUADRANT_INPUTS:
        raise ValueError(f"the number of given quadrants must be 1, 2 or 3, got {num_quadrants!r}")
    c, h, w = (int(s) for s in image_shape)
    m = torch.zeros(c, h, w, dtype=torch.bool)
    rows = {"top": slice(0, h // 2), "bottom": slice(h // 2, h)}
    cols = {"left": slice(0, w // 2), "right": slice(w // 2, w)}
    for name in QUADRANT_INPUTS[num_quadrants]:
        row, col = name.split("-")
        m[:, rows[row], cols[col]] = True
    return m.reshape(-1)


def with_quadrant_masks(data, num_quadrants=(1, 2, 3)):
    """The quadrant-completion data set: every image of ``data`` once per number of
    given quadrants k in ``num_quadrants``, with ``y`` the observed-pixel mask
    m = :func:`quadrant_mask` (k) (``(N·len(num_quadrants), C*H*W)`` bool).

    Batches are ``(x, m)``: x the whole image, of which the model observes x⊙m as the
    condition c and predicts the rest (see :class:`~pyro_vae.models.QuadrantCondition`).
    Rows are grouped by k (all images with the first k, then the next).
    """
    if isinstance(num_quadrants, int):
        num_quadrants = (num_quadrants,)
    num_quadrants = tuple(num_quadrants)
    if not num_quadrants:
        raise ValueError("num_quadrants is empty; give some of 1, 2, 3")
    masks = [quadrant_mask(k, data.image_shape).to(data.x.device) for k in num_quadrants]
    n = len(data)
    x = data.x.repeat(len(num_quadrants), 1)
    y = torch.cat([m.expand(n, -1) for m in masks])
    ks = "".join(str(k) for k in num_quadrants)
    return ImageData(x=x, y=y, image_shape=data.image_shape, name=f"{data.name}+quadrants{ks}",
                     binarize=data.binarize)
