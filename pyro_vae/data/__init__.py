"""Data: image data sets as flat float tensors ``(N, C*H*W)`` with their image shape.

- :mod:`~pyro_vae.data.images`: :class:`ImageData`, label checks, static binarization;
- :mod:`~pyro_vae.data.datasets`: :func:`load_dataset` by name, from the data folder;
- :mod:`~pyro_vae.data.files`: the ``.amat`` and IDX readers, downloads;
- :mod:`~pyro_vae.data.conditions`: one-hot labels and quadrant masks for the conditional VAE.
"""

from .conditions import QUADRANT_INPUTS, one_hot, quadrant_mask, with_quadrant_masks
from .datasets import (
    BINARIZE_MODES,
    BINARIZED_MNIST_URL,
    DATASETS,
    NO_TEST_SPLIT,
    check_split,
    data_root,
    load_dataset,
    splits,
)
from .files import download_file, read_amat, read_idx
from .images import DataError, ImageData, binarize_static, check_labels

__all__ = [
    "BINARIZE_MODES",
    "BINARIZED_MNIST_URL",
    "DATASETS",
    "NO_TEST_SPLIT",
    "QUADRANT_INPUTS",
    "DataError",
    "ImageData",
    "binarize_static",
    "check_labels",
    "check_split",
    "data_root",
    "download_file",
    "load_dataset",
    "one_hot",
    "quadrant_mask",
    "read_amat",
    "read_idx",
    "splits",
    "with_quadrant_masks",
]
