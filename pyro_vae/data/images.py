"""Image data sets in memory: :class:`ImageData` (flat float tensors ``(N, C*H*W)`` with
their image shape and labels), label checks, and static binarization."""

import math
from dataclasses import dataclass, field

import torch


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
    :ivar dict source: where the data came from, as a :class:`~pyro_vae.config.DataConfig`'s
        entries (set by :func:`~pyro_vae.data.load_dataset`; None for data made by hand):
        what :func:`~pyro_vae.train.fit` ``(..., out=...)`` stores so that a resume loads
        the same data.
    """

    x: torch.Tensor
    y: torch.Tensor = None
    image_shape: tuple = (1, 28, 28)
    name: str = ""
    binarize: str = None
    num_classes: int = field(default=None)
    source: dict = field(default=None, compare=False)

    def __post_init__(self):
        if self.x.dim() != 2 or self.x.shape[1] != math.prod(self.image_shape):
            raise DataError(
                f"{self.name or 'data'}: expected images of shape (N, {math.prod(self.image_shape)}) "
                f"for image shape {tuple(self.image_shape)}, got {tuple(self.x.shape)}"
            )
        if not torch.isfinite(self.x).all():
            raise DataError(f"{self.name or 'data'}: the images hold NaN or inf values")
        if self.binarize == "dynamic" and (self.x.min() < 0 or self.x.max() > 1):
            raise DataError(
                f"{self.name or 'data'}: dynamic binarization draws x ~ Bernoulli(p) and needs grey "
                f"levels p in [0, 1], got values in [{self.x.min():.4g}, {self.x.max():.4g}]"
            )
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
            idx = order[start : start + batch_size]
            xb = self.x[idx]
            if self.binarize == "dynamic":
                u = torch.rand(xb.shape, generator=generator).to(xb.device)
                xb = (u < xb).to(xb.dtype)
            yield xb, (self.y[idx] if self.y is not None else None)


def check_labels(y, num_classes, name="labels", check_values=True):
    """Check class labels for a model with ``num_classes`` classes (a conditional VAE).

    :param torch.Tensor y: labels, shape ``(N,)``, an integer dtype.
    :param int num_classes: K; every label must lie in {0, …, K−1}.
    :param str name: what the labels belong to, for the message.
    :param bool check_values: also check the range of the values (False: dtype, shape
        and ``num_classes`` only).
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
    if not check_values:
        return y
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(
            f"{name}: {int(bad.sum())} labels are out of range for {num_classes} classes "
            f"(labels must lie in 0..{num_classes - 1}; the first is {y[bad][0].item()} "
            f"at index {int(bad.nonzero()[0, 0])})"
        )
    return y


def binarize_static(x, seed):
    """One seeded Bernoulli draw of grey levels: x_b = 1[u < x], u ~ U(0, 1) from a
    generator seeded with ``seed`` (the same images for the same seed).

    :param torch.Tensor x: grey levels in [0, 1], any shape.
    :raises DataError: for values outside [0, 1]."""
    if x.min() < 0 or x.max() > 1:
        raise DataError(
            f"binarization draws x ~ Bernoulli(p) and needs grey levels p in [0, 1], "
            f"got values in [{x.min():.4g}, {x.max():.4g}]"
        )
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(x.shape, generator=g) < x).to(x.dtype)
