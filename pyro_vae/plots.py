"""Pictures: loss curves (matplotlib) and image grids (torchvision's ``make_grid``).

Every function writes a PNG and returns the path; image grids also return nothing else
the caller needs, the tensors come from the model's own methods
(:meth:`~pyro_vae.models.VAE.sample`, :meth:`~pyro_vae.models.VAE.reconstruct`).
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data import quadrant_mask  # noqa: E402
from .eval.latent import LatentFrame, dead_zone_threshold, latent_codes, latent_frame, nearest_distances  # noqa: E402


def make_grid(*args, **kwargs):
    """torchvision's ``make_grid``, imported on first use (torchvision takes seconds to
    import, and the command line needs it only when it draws)."""
    from torchvision.utils import make_grid as _make_grid

    return _make_grid(*args, **kwargs)


def save_image(*args, **kwargs):
    """torchvision's ``save_image``, imported on first use."""
    from torchvision.utils import save_image as _save_image

    return _save_image(*args, **kwargs)


def as_images(x, image_shape):
    """``(N, C*H*W)`` → ``(N, C, H, W)``, clamped to [0, 1], on the CPU."""
    return x.detach().float().cpu().reshape(-1, *image_shape).clamp(0, 1)


def save_grid(x, image_shape, path, nrow=8, scale=None):
    """Write images ``x`` (``(N, C*H*W)``) as one PNG grid of ``nrow`` images per row.

    :param int scale: upscale small images by this integer factor (default: to at least
        48 pixels wide, 6 for 8×8 digits; none for 28×28 images).
    """
    images = as_images(x, image_shape)
    if scale is None:
        scale = max(1, 48 // image_shape[-1])
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images, nrow=nrow, padding=2, pad_value=0.5), path)
    return path


def loss_axis_limits(*curves, skip=0.05):
    """``(low, high)`` of a loss axis that shows where the curves settle: from their
    minimum to their maximum after the first ``skip`` fraction of epochs (at least the
    first epoch), with a margin of 5%; None for curves of fewer than 3 epochs."""
    values = [[v for v in c if v is not None and math.isfinite(v)] for c in curves if c]
    n = max((len(c) for c in values), default=0)
    if n < 3:
        return None
    start = max(1, int(skip * n))
    low = min(min(c) for c in values if c)
    high = max(max(c[start:]) for c in values if c[start:])
    pad = 0.05 * (high - low) or 1.0
    return low - pad, high + pad


def plot_losses(history, path, title=None):
    """Train and validation loss per epoch (nats per data point), labelled with the
    objective's name (``title``, default the history's ``"objective"``: ``-ELBO``,
    ``-L_K``, ``Fisher loss``, ``reconstruction``). The axis shows where the curves settle
    (:func:`loss_axis_limits`: the first epochs may lie above it); the best validation
    epoch is marked."""
    title = title or history.get("objective", "-ELBO")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    train, valid = history["train_loss"], history.get("valid_loss") or []
    epochs = range(1, len(train) + 1)
    ax.plot(epochs, train, label="train")
    if valid:
        ax.plot(range(1, len(valid) + 1), valid, label="validation")
        finite = [(v, e) for e, v in enumerate(valid, 1) if v is not None and math.isfinite(v)]
        if finite:
            best, at = min(finite)
            ax.plot([at], [best], "o", color="C1", ms=4)
            ax.annotate(
                f"best {best:.2f} (epoch {at})",
                (at, best),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
            )
    limits = loss_axis_limits(train, valid)
    if limits is not None:
        ax.set_ylim(*limits)
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
    x = x[: n * 4]
    recon = vae.reconstruct(x)
    rows = []
    for i in range(0, x.shape[0], n):
        rows += [x[i : i + n], recon[i : i + n]]
    return save_grid(torch.cat(rows), image_shape, path, nrow=n)


def save_samples(vae, image_shape, path, n=64, mean=True):
    """``n`` samples z ~ p(z), decoded to E[x|z] (or a draw of x if not ``mean``)."""
    return save_grid(vae.sample(n, mean=mean), image_shape, path, nrow=int(n**0.5) or 1)


def save_overview(vae, x, image_shape, path, nrow=8):
    """Three panels side by side: the images ``x`` (``(N, C*H*W)``), their
    reconstructions E[x|z=E_q z], and N samples z ~ p(z) decoded to E[x|z]."""
    grids = {"validation images": x, "reconstructions": vae.reconstruct(x), "samples, z ~ p(z)": vae.sample(x.shape[0])}
    return plot_image_grids(grids, image_shape, path, nrow=nrow)


# ---- conditional VAE ---------------------------------------------------------------------
def save_class_samples(model, image_shape, path, n=10, mean=True):
    """One row per class k = 0, …, K−1 of a class-conditional model, ``n`` images each:
    z ~ p(z|c=k) decoded to E[x|z,c=k] (or a draw of x if not ``mean``)."""
    k = model.condition.num_classes
    c = torch.arange(k).repeat_interleave(n)
    return save_grid(model.sample(c=c, mean=mean), image_shape, path, nrow=n)


def save_completions(model, x, image_shape, path, num_quadrants=(1, 2, 3), num_samples=3, hidden_value=0.35):
    """Quadrant completions next to the truth: for each number k of given quadrants,
    a panel whose columns are the images ``x`` and whose rows are the given quadrants
    (hidden pixels shown at ``hidden_value`` grey), the truth, and ``num_samples``
    completions z ~ p(z|c), x_u = E[x_u|z,c] (:meth:`~pyro_vae.models.ConditionalVAE.complete`)."""
    n, d = x.shape
    fig, axes = plt.subplots(
        len(num_quadrants),
        1,
        figsize=(1.0 + 0.55 * n, 0.62 * (2 + num_samples) * len(num_quadrants) + 0.3),
        dpi=120,
        squeeze=False,
    )
    labels = ["given", "truth"] + [f"sample {i + 1}" for i in range(num_samples)]
    for ax, k in zip(axes[:, 0], num_quadrants):
        m = quadrant_mask(k, image_shape).to(x.device).expand(n, d)
        given = torch.where(m, x, torch.full_like(x, hidden_value))
        filled = model.complete(x, m, n=num_samples).reshape(-1, d)
        rows = as_images(torch.cat([given, x, filled]), image_shape)
        grid = make_grid(rows, nrow=n, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        h = image_shape[-2] + 2
        ax.set_yticks([2 + h * i + h / 2 - 1 for i in range(len(labels))], labels, fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"{k} quadrant{'s' if k > 1 else ''} given", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)  # keep the row labels whole
    plt.close(fig)
    return path


# ---- the latent space drawn: maps, manifolds, interpolations -----------------------------


def save_figure(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def project_2d(codes, *others):
    """Project ``codes`` ``(N, d)`` (and ``others``, ``(M, d)`` each, with the same map)
    to 2-D: unchanged for d = 2, else onto the codes' first two principal axes
    (scikit-learn's PCA, centred on the codes' mean).

    :returns: ``(codes_2d, [others_2d...], note)``; ``note`` says what was done, e.g.
        ``"PCA of 16-D codes, 2 axes explain 41% of variance"`` (empty for d = 2).
    """
    d = codes.shape[-1]
    if d == 1:
        raise ValueError("a latent map needs at least 2 latent dimensions, the model has 1")
    if d == 2:
        return codes, list(others), ""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(codes.double().numpy())
    proj = [torch.from_numpy(pca.transform(c.double().numpy())).to(codes.dtype) for c in (codes,) + others]
    note = f"PCA of {d}-D codes, 2 axes explain {100 * pca.explained_variance_ratio_.sum():.0f}% of variance"
    return proj[0], proj[1:], note


def latent_map_panel(
    model, x, labels=None, title=None, standardize="auto", draws=None, quantile=0.99, codes="sample", seed=0
):
    """What :func:`plot_latent_maps` draws for one model: the codes E_q[z|x] of test
    images ``x`` in the model's :class:`~pyro_vae.eval.latent.LatentFrame` (z-scored for
    an autoencoder, as is for a VAE), and optionally ``draws`` u ~ N(0, I) in that frame
    with a flag for those in a dead zone (:func:`~pyro_vae.eval.latent.dead_zone_share`),
    judged against ``codes`` as in :func:`~pyro_vae.eval.latent.dead_zone_report`
    (``"sample"``: one z ~ q(z|x) per image; ``"mean"``: the encoder means shown).

    :param int draws: number of prior draws to show (None: none); the same draws as
        :func:`~pyro_vae.eval.latent.dead_zone_report` with the same ``seed``.
    """
    codes = latent_codes(model, x)
    frame = latent_frame(model, codes, standardize)
    u = frame.to_frame(codes)
    standardized = not bool((frame.scale == 1).all() and (frame.shift == 0).all())
    kind = type(model).__name__
    panel = dict(
        codes=u,
        labels=labels,
        title=title or f"{kind}: " + ("codes, standardized (z-score)" if standardized else "encoder means E_q[z|x]"),
    )
    if draws:
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(int(draws), u.shape[1], generator=g)
        ref = u if codes == "mean" else frame.to_frame(latent_codes(model, x, sample=True, seed=seed))
        panel["draws"] = v
        panel["dead"] = nearest_distances(v, ref) > dead_zone_threshold(ref, quantile)
        panel["dead_codes"] = "the codes shown" if codes == "mean" or kind == "Autoencoder" else "codes z ~ q(z|x)"
    return panel


def plot_latent_maps(panels, path, lim=4.0, circles=(1, 2, 3)):
    """Latent maps side by side, on the same axes: test codes coloured by digit.

    :param panels: a list of dicts from :func:`latent_map_panel` (``codes`` ``(N, d)``,
        ``labels`` ``(N,)`` or None, ``title``; optionally ``draws`` and a boolean
        ``dead`` per draw, drawn as black crosses where True). Codes with d > 2 are
        projected by :func:`project_2d`, and the figure says so.
    :param float lim: both axes span [−lim, lim] in every panel.
    :param circles: radii r of the prior N(0, I₂)'s circles drawn dashed; the circle of
        radius r holds 1 − e^{−r²/2} of its mass (39%, 86%, 99% for r = 1, 2, 3). Any
        orthonormal projection of N(0, I_d) is N(0, I₂), so they hold for PCA maps too.
    """
    if not panels:
        raise ValueError("no latent maps to draw")
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.9, 4.6), dpi=110, squeeze=False)
    scatter = None
    for ax, p in zip(axes[0], panels):
        draws = p.get("draws")
        c2, others, note = project_2d(p["codes"], *([draws] if draws is not None else []))
        labels = p.get("labels")
        if labels is not None:
            scatter = ax.scatter(
                c2[:, 0], c2[:, 1], c=labels.cpu(), cmap="tab10", vmin=-0.5, vmax=9.5, s=4, alpha=0.8, linewidths=0
            )
        else:
            ax.scatter(c2[:, 0], c2[:, 1], s=4, alpha=0.6, linewidths=0, color="tab:blue")
        if draws is not None and p.get("dead") is not None:
            dead = others[0][p["dead"]]
            ax.scatter(
                dead[:, 0],
                dead[:, 1],
                marker="x",
                s=9,
                color="black",
                linewidths=0.6,
                label=f"N(0, I) draws in dead zones ({100 * p['dead'].float().mean():.1f}%)"
                + (f"\nof {p['dead_codes']}" if p.get("dead_codes") else ""),
            )
            ax.legend(loc="lower left", fontsize=7, framealpha=0.85)
        theta = torch.linspace(0, 2 * torch.pi, 200)
        for r in circles:
            ax.plot(r * theta.cos(), r * theta.sin(), ls="--", lw=0.8, color="0.3")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel("PC 1" if note else "$u_1$")
        ax.set_ylabel("PC 2" if note else "$u_2$")
        if note:
            ax.text(
                0.5,
                0.985,
                note,
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=7,
                bbox=dict(facecolor="white", alpha=0.8, lw=0),
            )
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=axes[0].tolist(), ticks=range(10), fraction=0.03, pad=0.02)
        bar.set_label("digit")
    fig.text(
        0.01,
        0.01,
        f"dashed: circles of N(0, I) holding {', '.join(f'{100 * (1 - math.exp(-r * r / 2)):.0f}%' for r in circles)}",
        fontsize=7,
        color="0.3",
    )
    return save_figure(fig, path)


def gaussian_quantile_grid(n=15, lo=0.05, hi=0.95):
    r"""An n × n grid of points in the plane at Gaussian quantiles (Kingma & Welling's
    manifold figures): u = (Φ⁻¹(p_j), Φ⁻¹(p_i)) for p evenly spaced in [lo, hi], Φ⁻¹
    the standard normal quantile function (``torch.distributions.Normal.icdf``).

    :returns: ``(n*n, 2)``, row-major as an image reads: the first row has the largest
        second coordinate, columns run left to right in the first coordinate.
    """
    if n < 1:
        raise ValueError(f"the grid needs n >= 1 points a side, got {n}")
    if not 0 < lo <= hi < 1:
        raise ValueError(f"quantile levels must satisfy 0 < lo <= hi < 1, got lo={lo}, hi={hi}")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(lo, hi, n))
    rows, cols = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


@torch.no_grad()
def decode_manifold(model, n=15, codes=None, standardize="auto", lo=0.05, hi=0.95):
    """Decode the latent plane at Gaussian quantiles: E[x | z] for z on
    :func:`gaussian_quantile_grid` mapped into the latent space.

    The grid lives in the model's frame (:class:`~pyro_vae.eval.latent.LatentFrame`, fitted
    on ``codes`` for an autoencoder; the identity without ``codes``), so quantiles of
    N(0, 1) reach as far as the codes do. For d > 2 latent dimensions the plane is
    spanned by the first two principal axes of the framed ``codes`` (by the first two
    latent axes without ``codes``), through the origin.

    :param codes: test codes ``(N, d)`` (:func:`~pyro_vae.eval.latent.latent_codes`) or None.
    :returns: ``(n*n, x_dim)`` images, row-major.
    """
    d = model.z_dim
    if d < 2:
        raise ValueError("a decoded manifold needs at least 2 latent dimensions, the model has 1")
    grid = gaussian_quantile_grid(n, lo, hi)
    if codes is None:
        frame, basis = LatentFrame.identity(d), torch.eye(d)[:2]
    else:
        frame = latent_frame(model, codes, standardize)
        if d > 2:
            from sklearn.decomposition import PCA

            basis = torch.from_numpy(PCA(2).fit(frame.to_frame(codes).double().numpy()).components_).float()
        else:
            basis = torch.eye(d)[:2]
    z = frame.to_latent(grid @ basis)
    device = next(model.parameters()).device
    return model.decode(z.to(device)).cpu()


def save_manifold(model, image_shape, path, n=15, codes=None, standardize="auto"):
    """Write :func:`decode_manifold` as an n × n PNG grid."""
    return save_grid(decode_manifold(model, n, codes, standardize), image_shape, path, nrow=n)


@torch.no_grad()
def interpolate(model, x_a, x_b, steps=10):
    r"""Decoded images along the straight line between the codes of two inputs:
    z_t = (1 − t) c(x_a) + t c(x_b), t = 0, 1/(steps−1), …, 1, with c(x) = E_q[z|x];
    returns E[x | z_t].

    :param x_a: ``(x_dim,)`` or a batch ``(k, x_dim)``; ``x_b`` likewise.
    :returns: ``(steps, x_dim)`` for single inputs, ``(k, steps, x_dim)`` for batches.
    """
    if steps < 2:
        raise ValueError(f"an interpolation needs steps >= 2, got {steps}")
    single = x_a.dim() == 1
    x_a, x_b = x_a.reshape(-1, x_a.shape[-1]), x_b.reshape(-1, x_b.shape[-1])
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a {tuple(x_a.shape)} and x_b {tuple(x_b.shape)} must have the same shape")
    model.eval()
    z_a, z_b = model.encode(x_a).mean, model.encode(x_b).mean
    t = torch.linspace(0, 1, steps, device=z_a.device)[:, None]
    z = (1 - t) * z_a[:, None, :] + t * z_b[:, None, :]  # (k, steps, d)
    out = model.decode(z)
    return out[0] if single else out


def save_interpolations(model, x_a, x_b, image_shape, path, steps=10):
    """One row per pair: the input x_a, the ``steps`` decoded images of
    :func:`interpolate` from x_a to x_b, and the input x_b."""
    x_a, x_b = x_a.reshape(-1, x_a.shape[-1]), x_b.reshape(-1, x_b.shape[-1])
    path_images = interpolate(model, x_a, x_b, steps).to(x_a.device)
    rows = torch.cat([x_a[:, None], path_images, x_b[:, None]], dim=1)
    return save_grid(rows.reshape(-1, x_a.shape[-1]), image_shape, path, nrow=steps + 2)


def plot_image_grids(grids, image_shape, path, nrow=None, suptitle=None):
    """Image grids side by side with a title each (e.g. AE and VAE samples or manifolds):
    each value of ``grids`` (``{title: (N, C*H*W)}``) through torchvision's ``make_grid``."""
    if not grids:
        raise ValueError("no image grids to draw")
    n = len(grids)
    made = {
        title: make_grid(
            as_images(images, image_shape),
            nrow=nrow or int(math.ceil(math.sqrt(len(images)))),
            padding=1,
            pad_value=1.0,
        )
        for title, images in grids.items()
    }
    aspect = max(g.shape[1] / g.shape[2] for g in made.values())  # height / width of the tallest grid
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 4.3 * aspect + (0.7 if suptitle else 0.5)), dpi=110, squeeze=False)
    for ax, (title, grid) in zip(axes[0], made.items()):
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ---- NUTS against the guide: pair plots ---------------------------------------------------
def plot_posterior_pairs(idata, guides, path, dims=None, title=None, max_points=1000):
    """Pair plot (``arviz.plot_pair``, scatter with marginal densities) of the NUTS draws
    of p(z|x) (black) with the draws of one or more guides overlaid in colour.

    :param idata: :func:`~pyro_vae.eval.posterior.nuts_posterior`'s InferenceData.
    :param dict guides: ``{name: draws}``, draws ``(S, z_dim)`` of each guide's q(z|x).
    :param dims: latent coordinates to show (default
        :func:`~pyro_vae.eval.posterior.informative_dims`, 4 of them).
    :returns: the PNG path.
    """
    import arviz as az

    from .eval import posterior

    dims = list(dims) if dims is not None else posterior.informative_dims(idata)
    if len(dims) < 2:
        raise ValueError(f"a pair plot needs at least two latent coordinates, got dims={dims}")
    coords = {"z_dim": dims}
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple"]
    size = 2.0 * len(dims)
    nuts = _thin(posterior.nuts_draws(idata).numpy(), max_points)
    ax = az.plot_pair(
        az.from_dict(posterior={"z": nuts}, coords={"z_dim": np.arange(nuts.shape[-1])}, dims={"z": ["z_dim"]}),
        var_names=["z"],
        coords=coords,
        marginals=True,
        figsize=(size + 1, size),
        scatter_kwargs=dict(color="black", alpha=0.35, s=6, zorder=3),
        marginal_kwargs=dict(color="black"),
    )
    for draws, color in zip(guides.values(), colors):
        z = np.asarray(torch.as_tensor(draws).double().cpu().numpy())[None, :max_points]
        q = az.from_dict(posterior={"z": z}, coords={"z_dim": np.arange(z.shape[-1])}, dims={"z": ["z_dim"]})
        az.plot_pair(
            q,
            var_names=["z"],
            coords=coords,
            marginals=True,
            ax=ax,
            scatter_kwargs=dict(color=color, alpha=0.35, s=6),
            marginal_kwargs=dict(color=color),
        )
    fig = np.ravel(ax)[0].figure
    handles = [plt.Line2D([], [], color="black", marker="o", ls="", label="NUTS p(z|x)")]
    handles += [plt.Line2D([], [], color=c, marker="o", ls="", label=f"q(z|x): {n}") for n, c in zip(guides, colors)]
    fig.legend(handles=handles, loc="upper right", frameon=False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _thin(z, max_points):
    """Of pooled draws ``(n, d)``, at most ``max_points`` evenly spaced, ``(1, m, d)``."""
    flat = z.reshape(-1, z.shape[-1])
    step = max(1, flat.shape[0] // max_points)
    return flat[::step][None, :max_points]
