r"""The latent space of a trained model, measured: codes of the data (the guide's mean
E_q[z|x], or draws z ~ q(z|x)), an affine frame u = (z − shift) / scale in which they are
compared with N(0, I) (the identity for a VAE, a z-score for an autoencoder), nearest-
neighbour distances, and the dead zones: the share of draws u ~ N(0, I) whose nearest
code is farther than the ``quantile`` of the codes' own nearest-neighbour distances,

    s = (1/M) Σ_m 1[ min_n ‖u_m − c_n‖ > t ],   t = quantile of {min_{k≠n} ‖c_n − c_k‖},

with what an independent classifier (:mod:`pyro_vae.eval.classifier`) makes of the
decoded draws.
"""

import math
from dataclasses import dataclass

import torch

from ..models import Autoencoder
from .classifier import classifier_probs, predicted_class_entropy
from .common import MeanStderr


@torch.no_grad()
def latent_codes(model, x, batch_size=1000, sample=False, seed=0):
    """Codes of ``x`` (``(N, x_dim)``), ``(N, z_dim)``, on the CPU: the guide's mean
    E_q[z|x] (the encoder mean of a VAE, the code f(x) of an autoencoder), or with
    ``sample`` one draw z_n ~ q(z|x_n) each (seeded with ``seed``; the code itself for
    an autoencoder's point mass)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = []
        for i in range(0, x.shape[0], batch_size):
            q = model.encode(x[i : i + batch_size].to(device))
            out.append((q.sample() if sample else q.mean).cpu())
    return torch.cat(out)


@dataclass
class LatentFrame:
    r"""An affine chart of the latent space, per dimension j:

        u_j = (z_j − shift_j) / scale_j,      z_j = shift_j + scale_j u_j.

    A VAE's prior N(0, I) fixes its latent scale, so its frame is the identity. An
    autoencoder's codes have an arbitrary location and scale, so before comparing them
    with N(0, I) they are standardized with the test codes' own mean and standard
    deviation (:meth:`fit`): the autoencoder gets the best diagonal Gaussian fit, and a
    draw u ~ N(0, I) in its frame is decoded at z = shift + scale ⊙ u.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def identity(cls, z_dim):
        return cls(torch.zeros(z_dim), torch.ones(z_dim))

    @classmethod
    def fit(cls, codes):
        """The z-score frame of ``codes`` ``(N, d)``: their mean and standard deviation."""
        if codes.dim() != 2 or codes.shape[0] < 2:
            raise ValueError(f"need at least two codes of shape (N, z_dim) to standardize, got {tuple(codes.shape)}")
        scale = codes.std(0)
        if not (scale > 0).all():
            dims = (scale <= 0).nonzero().flatten().tolist()
            raise ValueError(f"cannot standardize codes: latent dimension(s) {dims} have zero spread")
        return cls(codes.mean(0), scale)

    def to_frame(self, z):
        return (z - self.shift.to(z)) / self.scale.to(z)

    def to_latent(self, u):
        return self.shift.to(u) + self.scale.to(u) * u


def latent_frame(model, codes, standardize="auto"):
    """The frame in which ``model``'s codes are compared with N(0, I).

    :param standardize: True (z-score with ``codes``), False (identity) or ``"auto"``:
        True for an :class:`~pyro_vae.models.Autoencoder`, False otherwise."""
    if getattr(model, "prior_kind", "fixed") == "vamp":
        raise ValueError(
            "the latent-space measures compare the codes with N(0, I), and this model's prior is the "
            "VampPrior, a mixture: they do not apply to it"
        )
    if standardize == "auto":
        standardize = isinstance(model, Autoencoder)
    return LatentFrame.fit(codes) if standardize else LatentFrame.identity(codes.shape[-1])


def nearest_distances(queries, reference, exclude_self=False, chunk_size=1024):
    r"""Euclidean distance from each query to its nearest reference point,
    d_m = min_n ‖q_m − r_n‖, ``(M,)``.

    :param bool exclude_self: ``queries`` *are* ``reference``: skip each point itself
        (its nearest *other* point)."""
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and reference {tuple(reference.shape)} must be "
            "(M, d) and (N, d) with the same d"
        )
    if reference.shape[0] < (2 if exclude_self else 1):
        raise ValueError(f"need {'two' if exclude_self else 'one'} or more reference points, got {reference.shape[0]}")
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        d = torch.cdist(queries[start : start + chunk_size].double(), reference.double())
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out).to(queries.dtype)


def dead_zone_threshold(codes, quantile=0.99):
    """The ``quantile`` of the codes' nearest-neighbour distances (each code to its
    nearest other code): how far from its neighbours a code may lie in the data."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return float(torch.quantile(nearest_distances(codes, codes, exclude_self=True).double(), quantile))


def dead_zone_share(draws, codes, quantile=0.99):
    r"""Share of ``draws`` that fall in a dead zone of ``codes``:

        s = (1/M) Σ_m 1[ min_n ‖u_m − c_n‖ > t ],   t = ``quantile`` of {min_{k≠n} ‖c_n − c_k‖},

    the share of draws whose nearest code is farther than all but (1 − quantile) of the
    codes are from theirs. If the draws come from the distribution of the codes,
    s ≈ 1 − quantile (0.01 by default); draws that land in empty space push s to 1.

    :param draws: ``(M, d)``, e.g. u ~ N(0, I) in the codes' frame.
    :param codes: ``(N, d)``, the test codes in the same frame.
    :returns: ``(s, t)``.
    """
    t = dead_zone_threshold(codes, quantile)
    return float((nearest_distances(draws, codes) > t).double().mean()), t


@torch.no_grad()
def dead_zone_report(
    model, x, classifier=None, n_draws=2000, quantile=0.99, standardize="auto", seed=0, batch_size=1000, codes="sample"
):
    r"""Dead zones of a trained model's latent space, as numbers.

    Test codes c_n of the images ``x`` are put in the model's :class:`LatentFrame`
    (identity for a VAE, z-score for an autoencoder, fitted on the encoder means), M
    draws u_m ~ N(0, I) are taken in that frame and decoded at z_m = frame⁻¹(u_m) to
    E[x|z_m]. Reported:

    - ``share`` (a): :func:`dead_zone_share` of the draws against the codes, with its
      binomial standard error ``share_se`` = √(s(1−s)/M) (the threshold's own
      sampling noise, from N codes, comes on top). With ``codes="sample"`` (default)
      the test codes are one draw c_n ~ q(z|x_n) each: the region the decoder was
      trained on, and where a VAE's inactive latent units (q = p there, encoder mean 0)
      are no dead zone; ``share_means`` is then the same measure with the encoder means
      c_n = E_q[z|x_n] (what the latent map shows). An autoencoder's two coincide;
      for a standardized model ``share_raw`` (threshold ``threshold_raw``, standard
      error ``share_raw_se``) is the same measure for the same draws taken as
      z ~ N(0, I) against the codes *without* the frame, where ``model.sample`` draws;
    - ``confidence`` (b): :func:`~pyro_vae.eval.classifier.classifier_confidence` on the decoded draws, with its
      standard error over draws; ``confidence_data`` is the same on the real images,
      the ceiling to compare with; for a standardized model ``confidence_raw`` is the
      confidence on decoding z ~ N(0, I) *without* the frame (what ``model.sample`` does),
      and ``confidence_recon`` on the decoded test codes (reconstructions): what this
      decoder reaches where the data are, so a drop from it to ``confidence`` is the
      price of the prior draws' locations rather than of a blurry decoder;
    - ``class_entropy`` (and ``_raw``, ``_data``): :func:`~pyro_vae.eval.classifier.predicted_class_entropy` of the
      same images, whether the draws cover all classes or collapse onto a few.

    :param x: test images ``(N, x_dim)``.
    :param classifier: from :func:`~pyro_vae.eval.classifier.train_classifier`; without it (b) is skipped.
    :param int n_draws: M.
    :returns: a dict of plain numbers.
    """
    if codes not in ("sample", "mean"):
        raise ValueError(f"codes must be 'sample' (z ~ q(z|x)) or 'mean' (E_q[z|x]), got {codes!r}")
    means = latent_codes(model, x, batch_size)
    frame = latent_frame(model, means, standardize)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n_draws, means.shape[1], generator=g)
    test_codes = latent_codes(model, x, batch_size, sample=True, seed=seed) if codes == "sample" else means
    share, threshold = dead_zone_share(u, frame.to_frame(test_codes), quantile)
    standardized = not (bool((frame.shift == 0).all()) and bool((frame.scale == 1).all()))
    report = dict(
        model=getattr(model, "config", None) and model.config.get("model") or type(model).__name__,
        z_dim=int(means.shape[1]),
        n_codes=int(means.shape[0]),
        n_draws=int(n_draws),
        quantile=quantile,
        standardized=standardized,
        codes=codes,
        threshold=threshold,
        share=share,
        share_se=math.sqrt(share * (1 - share) / n_draws),
    )
    if codes == "sample":
        report["share_means"], report["threshold_means"] = dead_zone_share(u, frame.to_frame(means), quantile)
    if standardized:  # the same draws taken as z ~ N(0, I) in the model's own coordinates (model.sample)
        report["share_raw"], report["threshold_raw"] = dead_zone_share(u, test_codes, quantile)
        report["share_raw_se"] = math.sqrt(report["share_raw"] * (1 - report["share_raw"]) / n_draws)
    if classifier is not None:
        device = next(model.parameters()).device

        def judge(key, z=None):
            images = (
                x
                if z is None
                else torch.cat(
                    [
                        model.decode(z[i : i + batch_size].to(device)).cpu().clamp(0, 1)
                        for i in range(0, z.shape[0], batch_size)
                    ]
                )
            )
            probs = classifier_probs(classifier, images)
            report[key], report[key + "_se"] = MeanStderr(probs.max(-1).values).floats()
            return probs

        probs = judge("confidence", frame.to_latent(u))
        report["class_entropy"] = predicted_class_entropy(probs)
        if standardized:
            report["class_entropy_raw"] = predicted_class_entropy(judge("confidence_raw", u))
        judge("confidence_recon", means)
        report["class_entropy_data"] = predicted_class_entropy(judge("confidence_data"))
    return report


def dead_zone_table(reports, names=None):
    """A Markdown table of :func:`dead_zone_report` results, one row per model."""
    names = names or [r["model"] for r in reports]
    lines = [
        "| model | z_dim | frame | (a) dead-zone share, codes z ~ q(z|x) | (a) with encoder means | "
        "(b) classifier confidence on decoded draws | on reconstructions | on real test images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in zip(names, reports):
        conf = f"{r['confidence']:.3f} ± {r['confidence_se']:.3f}" if "confidence" in r else "–"
        if "confidence_raw" in r:
            conf += f" (raw z ~ N(0, I): {r['confidence_raw']:.3f} ± {r['confidence_raw_se']:.3f})"
        if "class_entropy" in r:
            conf += f"; class entropy {r['class_entropy']:.2f}"
            if "class_entropy_raw" in r:
                conf += f" (raw {r['class_entropy_raw']:.2f})"
        recon = f"{r['confidence_recon']:.3f}" if "confidence_recon" in r else "–"
        data = (
            f"{r['confidence_data']:.3f}; class entropy {r['class_entropy_data']:.2f}"
            if "confidence_data" in r
            else "–"
        )
        frame = "standardized codes" if r["standardized"] else "prior N(0, I)"
        share = f"{r['share']:.3f} ± {r['share_se']:.3f}"
        if "share_raw" in r:
            share += f" (raw z ~ N(0, I): {r['share_raw']:.3f} ± {r['share_raw_se']:.3f})"
        if r.get("codes") == "mean":
            sampled, means = "–", share
        else:
            sampled, means = share, f"{r['share_means']:.3f}"
        lines.append(f"| {name} | {r['z_dim']} | {frame} | {sampled} | {means} | {conf} | {recon} | {data} |")
    return "\n".join(lines)
