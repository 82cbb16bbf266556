"""Conditioning data for the conditional VAE: one-hot labels, quadrant masks."""

import torch

from .images import ImageData, check_labels


def one_hot(labels, num_classes, dtype=torch.float32, check_values=True):
    """One-hot codes e_c of class labels: ``(batch,)`` integers in {0, …, K−1} →
    ``(batch, K)`` with ``out[n, c_n] = 1`` and zeros elsewhere.

    :param labels: integer labels (tensor, sequence or int).
    :param int num_classes: K.
    :param bool check_values: check that every label lies in 0..K−1 (dtype and shape are
        always checked); a model checks them per call when Pyro's validation is on, as
        Pyro checks a distribution's support, and a traced step (which cannot read values)
        runs that check on its eager validation pass.
    :raises DataError: (a ValueError) naming the problem, from :func:`check_labels`, for
        float labels, a wrong shape, or a label outside 0..K−1.
    """
    if not torch.is_tensor(labels):
        labels = torch.as_tensor(labels)
    check_labels(labels, num_classes, name="class labels c", check_values=check_values)
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
    return ImageData(
        x=x,
        y=y,
        image_shape=data.image_shape,
        name=f"{data.name}+quadrants{ks}",
        binarize=data.binarize,
        source=data.source,
    )
