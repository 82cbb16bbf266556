r"""An independent judge of images: a small CNN classifier p(y | x) = softmax(f(x)),
trained on labelled real images by cross-entropy,

    min_f  −(1/N) Σ_n log softmax(f(x_n))_{y_n},

and its verdicts on a set of images: class probabilities, the mean max-softmax
confidence (1/N) Σ_n max_k p(y=k | x_n), the accuracy against labels, and the entropy of
the predicted classes. It belongs to no generative model, so it can compare the decoded
images of any of them.
"""

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .common import check_int


class DigitClassifier(nn.Module):
    r"""A small CNN p(y | x) = softmax(f(x)) over K classes, for flat images.

    f: two blocks of (3×3 convolution, ReLU, 2×2 max-pool), then a hidden linear layer
    and a linear layer to K logits. It works on any ``image_shape`` whose sides are at
    least 4 (8×8 digits, 28×28 MNIST).

    :param image_shape: ``(C, H, W)``; inputs arrive flat, ``(batch, C*H*W)``.
    :param int num_classes: K.
    :param channels: output channels of the two convolutions.
    :param int hidden_dim: width of the hidden linear layer.

    ``forward(x_flat) -> logits`` of shape ``(batch, K)``.
    """

    def __init__(self, image_shape, num_classes=10, channels=(16, 32), hidden_dim=64, dropout=0.25):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if min(h, w) < 4:
            raise ValueError(f"the classifier needs images at least 4×4, got image shape {tuple(image_shape)}")
        self.image_shape, self.num_classes = (c, h, w), int(num_classes)
        self.net = nn.Sequential(
            nn.Unflatten(-1, self.image_shape),
            nn.Conv2d(c, channels[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels[1] * (h // 4) * (w // 4), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, self.num_classes),
        )

    def forward(self, x):
        return self.net(x)


def _check_images(clf, images, what="images"):
    dim = math.prod(clf.image_shape)
    if images.dim() != 2 or images.shape[1] != dim:
        raise ValueError(
            f"the classifier takes flat {what} of shape (N, {dim}) for image shape "
            f"{clf.image_shape}, got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"no {what} given (N = 0)")


def train_classifier(
    data, epochs=10, seed=0, device="cpu", valid=None, batch_size=64, lr=2e-3, weight_decay=1e-4, progress=False
):
    r"""Train a :class:`DigitClassifier` on labelled real images by cross-entropy,

        min_f  −(1/N) Σ_n log softmax(f(x_n))_{y_n},

    with Adam. The classifier is *independent* of every generative model: it judges
    decoded images (:func:`classifier_confidence`) and labels them (conditional models).

    :param data: :class:`~pyro_vae.data.ImageData` with labels ``y`` (e.g. ``digits``
        or ``mnist10k``, train split). Grey levels in [0, 1].
    :param int epochs: passes over ``data``.
    :param int seed: seeds the initial weights, the batch order and the dropout masks.
    :param valid: optional labelled data; its accuracy is shown on the progress bar.
    :returns: the trained classifier, in eval mode; ``clf(x_flat)`` gives logits.
    """
    if data.y is None:
        raise ValueError(
            f"{data.name or 'the data'} has no labels; the classifier needs labelled images "
            "(e.g. 'digits' or 'mnist10k')"
        )
    check_int("epochs", epochs)
    if len(data.y) != len(data):
        raise ValueError(f"{len(data)} images but {len(data.y)} labels")
    num_classes = data.num_classes or int(data.y.max()) + 1
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    # the weights, the batch order and the dropout masks follow `seed`; the caller's global
    # generators are left as they were
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        clf = DigitClassifier(data.image_shape, num_classes).to(device)
        _fit_classifier(clf, data, epochs, valid, batch_size, lr, weight_decay, progress, device, seed)
    return clf.eval()


def _fit_classifier(clf, data, epochs, valid, batch_size, lr, weight_decay, progress, device, seed):
    x, y = data.x.to(device), data.y.to(device)
    optimizer = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="classifier", disable=not progress, leave=False)
    for _ in bar:
        clf.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        if valid is not None:
            bar.set_postfix(valid_acc=f"{classifier_accuracy(clf, valid.x, valid.y):.3f}")


@torch.no_grad()
def classifier_probs(clf, images, batch_size=2000):
    """softmax(f(x)): class probabilities ``(N, K)`` for flat ``images`` ``(N, C*H*W)``."""
    _check_images(clf, images)
    clf.eval()
    device = next(clf.parameters()).device
    return torch.cat(
        [clf(images[i : i + batch_size].to(device)).softmax(-1).cpu() for i in range(0, images.shape[0], batch_size)]
    )


def classifier_confidence(clf, images):
    r"""Mean max-softmax confidence (1/N) Σ_n max_k p(y=k | x_n), in [1/K, 1].

    Near 1 when every image looks like some class to the classifier; decoded images
    from the "dead zones" of a latent space look like none and score lower."""
    return float(classifier_probs(clf, images).max(-1).values.mean())


def classifier_accuracy(clf, images, labels):
    """Share of ``images`` whose most probable class is ``labels`` (``(N,)`` int)."""
    if labels is None or labels.shape != (images.shape[0],):
        raise ValueError(
            f"need one label per image: {images.shape[0]} images, labels of shape "
            f"{None if labels is None else tuple(labels.shape)}"
        )
    pred = classifier_probs(clf, images).argmax(-1)
    return float((pred == labels.cpu()).float().mean())


def predicted_class_entropy(probs):
    r"""Entropy (nats) of the classes the classifier picks for a set of images,
    H = −Σ_k f_k log f_k with f_k the share of images whose most probable class is k.

    log K (2.30 for ten digits) when every class is picked equally often, 0 when one class
    is picked for all: decoded draws that look like one blob score low even when the
    classifier is confident about that blob (``confidence`` alone misses it).

    :param probs: ``(N, K)`` class probabilities (:func:`classifier_probs`).
    """
    f = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1]).double() / probs.shape[0]
    f = f[f > 0]
    return float(-(f * f.log()).sum())
