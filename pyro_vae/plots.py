"""Pictures: loss curves (matplotlib) and image grids (torchvision's ``make_grid``).

Every function writes a PNG and returns the path; image grids also return nothing else
the caller needs, the tensors come from the model's own methods
(:meth:`~pyro_vae.models.VAE.sample`, :meth:`~pyro_vae.models.VAE.reconstruct`).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402


def as_images(x, image_shape):
    """``(N, C*H*W)`` → ``(N, C, H, W)``, clamped to [0, 1], on the CPU."""
    return x.detach().float().cpu().reshape(-1, *image_shape).clamp(0, 1)


def save_grid(x, image_shape, path, nrow=8, scale=None):
    """Write images ``x`` (``(N, C*H*W)``) as one PNG grid of ``nrow`` images per row.

    :param int scale: upscale small images (e.g. 8×8 digits) by this integer factor.
    """
    images = as_images(x, image_shape)
    if scale is None:
        scale = max(1, 28 // image_shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images, nrow=nrow, padding=2, pad_value=0.5), path)
    return path


def plot_losses(history, path, title="−ELBO"):
    """Train and validation loss per epoch (nats per data point)."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    epochs = range(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train")
    if history.get("valid_loss"):
        ax.plot(epochs, history["valid_loss"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{title} (nats per data point)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def save_reconstructions(vae, x, image_shape, path, n=8):
    """Rows of ``n`` inputs and, under each row, their reconstructions E[x|z=E_q z]."""
    x = x[:n * 4]
    recon = vae.reconstruct(x)
    rows = []
    for i in range(0, x.shape[0], n):
        rows += [x[i:i + n], recon[i:i + n]]
    return save_grid(torch.cat(rows), image_shape, path, nrow=n)


def save_samples(vae, image_shape, path, n=64, mean=True):
    """``n`` samples z ~ p(z), decoded to E[x|z] (or a draw of x if not ``mean``)."""
    return save_grid(vae.sample(n, mean=mean), image_shape, path, nrow=int(n ** 0.5) or 1)
