r"""Semi-supervised training data: a labelled data set of which only N_l points keep their
labels, chosen balanced per class with a fixed seed; the rest are unlabelled (label −1).

:class:`SemiSupervisedData` yields batches that are all labelled or all unlabelled, as Pyro's
``ss_vae_M2`` example steps on them: each epoch is one pass over the N_u unlabelled points in
shuffled batches of B, and after every ``labelled_every``-th of them one batch of
min(B, N_l) labelled points, drawn from a reshuffled cycle through the labelled set. With the
trainer's scaling N/B on every batch (N = N_l + N_u), an epoch of S_u unlabelled and S_l
labelled steps optimizes, up to the factor N,

    (S_u/S) E_u[−U(x)] + (S_l/S) E_l[−L(x, y) − α log q(y|x)],   S = S_u + S_l,

so ``labelled_every`` sets how much the few labelled points weigh against the many
unlabelled ones (``labelled_every=1``: every other step is labelled).
"""

import torch

from .images import DataError, ImageData

#: The label of a point without one.
UNLABELLED = -1


def choose_labelled(y, num_labels, num_classes=10, seed=0):
    """Indices of ``num_labels`` points chosen balanced per class: ⌊N_l/K⌋ of each class, one
    more for the first N_l mod K classes, each class's drawn uniformly without replacement by
    a generator seeded with ``seed``. Returns the sorted indices, ``(num_labels,)`` int64.

    :param torch.Tensor y: labels ``(N,)`` in 0..K−1.
    :raises DataError: if a class has fewer points than asked for, or N_l is not in 1..N.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or not 1 <= num_labels <= len(y):
        raise DataError(f"--labels must be an integer in 1..{len(y)} (the training points), got {num_labels!r}")
    g = torch.Generator().manual_seed(int(seed))
    per, extra = divmod(num_labels, num_classes)
    chosen = []
    for k in range(num_classes):
        want = per + (k < extra)
        members = (y == k).nonzero().flatten()
        if len(members) < want:
            raise DataError(
                f"{num_labels} labels balanced over {num_classes} classes need {want} of class {k}, "
                f"which has {len(members)} points"
            )
        chosen.append(members[torch.randperm(len(members), generator=g)[:want]])
    return torch.cat(chosen).sort().values


class SemiSupervisedData(ImageData):
    """Images of which some carry labels (``y >= 0``) and the rest do not (``y == -1``).

    :param int labelled_every: one labelled batch after every this many unlabelled ones.

    Other fields as :class:`~pyro_vae.data.ImageData` (``num_classes`` is not checked against −1).
    """

    def __init__(self, x, y, image_shape=(1, 28, 28), name="", binarize=None, labelled_every=1, source=None):
        super().__init__(x=x, y=y, image_shape=image_shape, name=name, binarize=binarize, source=source)
        if y is None:
            raise DataError(f"{name or 'data'}: semi-supervised data need labels (−1 where a point has none)")
        if isinstance(labelled_every, bool) or not isinstance(labelled_every, int) or labelled_every < 1:
            raise DataError(f"labelled_every must be a positive integer, got {labelled_every!r}")
        self.labelled_every = labelled_every
        if not ((y == UNLABELLED) | (y >= 0)).all():
            raise DataError(f"{name or 'data'}: labels must be ≥ 0, or −1 for a point without a label")

    @property
    def labelled(self):
        """Indices of the labelled points."""
        return (self.y != UNLABELLED).nonzero().flatten()

    @property
    def unlabelled(self):
        """Indices of the unlabelled points."""
        return (self.y == UNLABELLED).nonzero().flatten()

    def _batch(self, idx, generator):
        xb = self.x[idx]
        if self.binarize == "dynamic":
            u = torch.rand(xb.shape, generator=generator).to(xb.device)
            xb = (u < xb).to(xb.dtype)
        return xb, self.y[idx]

    def batches(self, batch_size, shuffle=True, generator=None, drop_last=False):
        """Yield ``(x_batch, y_batch)``: the unlabelled points in batches of ``batch_size``
        (labels −1), and after every ``labelled_every``-th one a batch of min(B, N_l)
        labelled points; every draw (orders, binarization) comes from ``generator``, so the
        same generator state gives the same epoch. Without ``shuffle`` (evaluation): every
        unlabelled batch, then every labelled point once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        lab, unl = self.labelled, self.unlabelled
        if not shuffle:
            for part in (unl, lab):
                for start in range(0, len(part), batch_size):
                    yield self._batch(part[start : start + batch_size], generator)
            return
        order = unl[torch.randperm(len(unl), generator=generator).to(unl.device)]
        b_lab = min(batch_size, len(lab))
        cycle, pos = lab[:0], 0
        for i, start in enumerate(range(0, len(order), batch_size)):
            yield self._batch(order[start : start + batch_size], generator)
            if b_lab and (i + 1) % self.labelled_every == 0:
                if pos + b_lab > len(cycle):  # the rest of this pass, then a fresh shuffle
                    cycle = torch.cat([cycle[pos:], lab[torch.randperm(len(lab), generator=generator).to(lab.device)]])
                    pos = 0
                yield self._batch(cycle[pos : pos + b_lab], generator)
                pos += b_lab


def semisupervised(data, num_labels, seed=0, labelled_every=1, num_classes=10, unlabelled=None):
    """``data`` (labelled :class:`~pyro_vae.data.ImageData`) with all but ``num_labels`` of its
    labels hidden (set to −1), the kept ones balanced per class (:func:`choose_labelled`).

    :param unlabelled: more images (:class:`~pyro_vae.data.ImageData` of the same image shape,
        another data set's training split), appended after ``data``'s as unlabelled points;
        their labels, if any, are dropped. None: none.
    :returns: :class:`SemiSupervisedData`, ``data``'s N points then ``unlabelled``'s.
    """
    if data.y is None:
        raise DataError(
            f"{data.name or 'the data'} has no labels; the semi-supervised VAE needs a labelled data set "
            "(mnist10k, digits, mnist, fashion-mnist) of which --labels N are kept"
        )
    keep = choose_labelled(data.y.cpu(), num_labels, num_classes, seed)
    x, y = data.x, torch.full_like(data.y, UNLABELLED)
    y[keep.to(y.device)] = data.y[keep.to(y.device)]
    name, source = f"{data.name} ({num_labels} labelled)", data.source
    if unlabelled is not None:
        if tuple(unlabelled.image_shape) != tuple(data.image_shape):
            raise DataError(
                f"the unlabelled images of {unlabelled.name} have shape {tuple(unlabelled.image_shape)}, "
                f"those of {data.name} {tuple(data.image_shape)}: they must be the same"
            )
        x = torch.cat([x, unlabelled.x.to(x.device, x.dtype)])
        y = torch.cat([y, torch.full((len(unlabelled),), UNLABELLED, dtype=y.dtype, device=y.device)])
        name = f"{name} + {len(unlabelled)} unlabelled of {unlabelled.name}"
        if source is not None:
            source = dict(source, unlabelled=(unlabelled.source or {}).get("dataset"))
    if source is not None:
        source = dict(source, labels=num_labels, label_seed=seed, labelled_every=labelled_every)
    return SemiSupervisedData(
        x,
        y,
        image_shape=data.image_shape,
        name=name,
        binarize=data.binarize,
        labelled_every=labelled_every,
        source=source,
    )
