"""The Fisher autoencoder against the VAE: the same model and guide, fitted by the Fisher
divergence of the joints (``objective="fisher"``) or by the ELBO (``objective="elbo"``),
on clean data and on data where a share of the training images is replaced by noise.

Both models have the same networks, the same fixed-scale Gaussian likelihood, the same
optimizer, batches, epochs and seed. Each is judged on the *clean* held-out images by

- the importance-sampled log-likelihood log p(x) (nats per image, K draws from q(z|x));
- the reconstruction error ‖x − E[x | z = E_q[z|x]]‖² per pixel;
- the sample quality: the mean max-softmax confidence of a digit classifier (trained on the
  clean training images) on decoded prior samples z ~ N(0, I).

    python examples/fisher_ae.py                                    # digits, 0/10/20% noise
    python examples/fisher_ae.py --dataset mnist10k --data ../shared/data --outliers 0 --epochs 10
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import build_vae, load_dataset  # noqa: E402
from pyro_vae.data import ImageData  # noqa: E402
from pyro_vae.eval import classifier_confidence, log_likelihood, train_classifier  # noqa: E402
from pyro_vae.plots import plot_image_grids  # noqa: E402
from pyro_vae.train.trainer import Trainer  # noqa: E402

OBJECTIVES = ("elbo", "fisher")


def with_outliers(data, share, seed=0):
    """A copy of ``data`` with ``round(share · N)`` images, chosen at random, replaced by
    noise images (every pixel uniform on [0, 1]); labels are dropped."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the outlier share must lie in [0, 1), got {share}")
    g = torch.Generator().manual_seed(seed)
    x = data.x.clone()
    idx = torch.randperm(len(x), generator=g)[: round(share * len(x))]
    x[idx] = torch.rand(len(idx), x.shape[1], generator=g)
    return ImageData(x=x, image_shape=data.image_shape, name=f"{data.name}+{share:.0%} noise")


@torch.no_grad()
def evaluate(vae, valid, clf, num_samples, seed=0):
    """Held-out log p(x) (mean, its standard error over images), reconstruction MSE per
    pixel, and classifier confidence on 1000 prior samples."""
    vae.eval()
    torch.manual_seed(seed)
    log_px = log_likelihood(vae, valid.x, num_samples=num_samples)
    mse = (valid.x - vae.reconstruct(valid.x)).pow(2).mean().item()
    samples = vae.sample(1000)
    return {
        "log_px": log_px.mean().item(),
        "log_px_se": (log_px.std() / len(log_px) ** 0.5).item(),
        "mse": mse,
        "confidence": classifier_confidence(clf, samples.clamp(0, 1)),
    }, samples[:36]


def main(args):
    train = load_dataset(args.dataset, "train", args.data)
    valid = load_dataset(args.dataset, "valid", args.data)
    shape = train.image_shape
    clf = train_classifier(train, epochs=args.classifier_epochs, seed=args.seed)
    real = classifier_confidence(clf, valid.x)
    print(f"classifier confidence on real held-out images: {real:.3f}")
    rows, grids = [], {}
    for share in args.outliers:
        data = with_outliers(train, share, seed=args.seed)
        for objective in OBJECTIVES:
            torch.manual_seed(args.seed)  # every model starts from the same initial weights
            vae = build_vae(shape, z_dim=args.z_dim, hidden_dims=args.hidden, likelihood="gaussian", scale=args.scale)
            trainer = Trainer(vae, data, objective=objective, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
            t0 = time.perf_counter()
            history = trainer.run(args.epochs, progress=False)
            seconds = time.perf_counter() - t0
            metrics, samples = evaluate(vae, valid, clf, args.num_samples, seed=args.seed)
            row = dict(
                objective=objective, outliers=share, seconds=seconds, final_train_loss=history.train_loss[-1], **metrics
            )
            rows.append(row)
            grids[f"{objective}, {share:.0%} noise"] = samples
            print(
                f"{objective:6s} outliers {share:4.0%}: log p(x) {row['log_px']:9.2f} ± {row['log_px_se']:.2f}  "
                f"MSE {row['mse']:.4f}  confidence {row['confidence']:.3f}  ({seconds:.0f} s)",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(args=vars(args), real_confidence=real, rows=rows), indent=1))
    plot_metrics(rows, real, out / f"fisher_vs_vae_{args.dataset}.png", args.dataset)
    plot_image_grids(
        grids,
        shape,
        out / f"fisher_vs_vae_samples_{args.dataset}.png",
        nrow=6,
        suptitle="decoded prior samples E[x|z], z ~ N(0, I)",
    )
    print_table(rows)
    print(f"wrote {out}")


def plot_metrics(rows, real_confidence, path, dataset):
    """Three panels against the outlier share: held-out log p(x), MSE, sample confidence."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=110)
    panels = [
        ("log_px", "held-out log p(x) (nats/image, ↑)"),
        ("mse", "reconstruction MSE per pixel (↓)"),
        ("confidence", "classifier confidence of samples (↑)"),
    ]
    for ax, (key, title) in zip(axes, panels):
        for objective, marker in zip(OBJECTIVES, "os"):
            pts = [(r["outliers"] * 100, r[key]) for r in rows if r["objective"] == objective]
            ax.plot(*zip(*pts), marker=marker, label="VAE (ELBO)" if objective == "elbo" else "Fisher AE")
        if key == "confidence":
            ax.axhline(real_confidence, color="grey", ls=":", label="real images")
        ax.set_xlabel("noise images in training set (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{dataset}: evaluated on clean held-out images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(rows):
    print("| objective | noise | held-out log p(x) | recon. MSE | sample confidence | train time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['objective']} | {r['outliers']:.0%} | {r['log_px']:.2f} ± {r['log_px_se']:.2f} | "
            f"{r['mse']:.4f} | {r['confidence']:.3f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Fisher autoencoder vs VAE, with and without outliers.")
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist10k", "mnist"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--outliers", type=float, nargs="+", default=[0.0, 0.1, 0.2], help="shares of noise images")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128])
    p.add_argument("--scale", type=float, default=0.1, help="fixed scale s of the Gaussian likelihood")
    p.add_argument("--num-samples", type=int, default=500, help="K, importance samples for log p(x)")
    p.add_argument("--classifier-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fisher-ae")
    main(p.parse_args())
