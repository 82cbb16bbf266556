"""Why a VAE and not an autoencoder: the latent space, measured and drawn.

An autoencoder (AE) and a VAE with the same networks and a 2-D latent space are trained on
the same images. The AE is trained by reconstruction alone; the VAE's KL term pulls its
codes towards the prior N(0, I). Then, for each model:

1. a latent map: test codes coloured by digit, side by side on the same axes (the AE's
   codes standardized, so that the comparison is fair);
2. a decoded manifold: images decoded on a grid at Gaussian quantiles;
3. dead zones as numbers: (a) the share of draws u ~ N(0, I) whose nearest test code is
   farther than the 99th percentile of the codes' nearest-neighbour distances, and
   (b) the mean confidence of an independent classifier on the decoded draws.

    python examples/latent_space.py                   # mnist10k from ../shared/data (else digits), ~3 min
    python examples/latent_space.py --dataset digits  # offline anywhere, ~1 min
"""

import argparse
import json
import os
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import plots
from pyro_vae.data import DataError, load_dataset
from pyro_vae.eval import classifier_accuracy, dead_zone_report, dead_zone_table, latent_codes, train_classifier
from pyro_vae.models import build_autoencoder, build_vae
from pyro_vae.train.trainer import Trainer

#: Per data set: epochs, hidden layer size, batch size, classifier epochs.
DEFAULTS = {"mnist10k": (40, 400, 128, 5), "digits": (150, 128, 64, 40)}


def data_root(arg):
    """``--data``, else ``$PYRO_VAE_DATA``, else ``../shared/data`` beside the checkout."""
    if arg or os.environ.get("PYRO_VAE_DATA"):
        return arg or os.environ["PYRO_VAE_DATA"]
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(args):
    pyro.set_rng_seed(args.seed)
    root = data_root(args.data)
    try:
        train = load_dataset(args.dataset, "train", root, binarize="dynamic")
    except DataError as e:
        if args.dataset != "mnist10k":
            raise
        print(f"{e}\n-> falling back to scikit-learn's digits (offline)")
        args.dataset = "digits"
        train = load_dataset(args.dataset, "train", root, binarize="dynamic")
    valid = load_dataset(args.dataset, "valid", root, binarize="static")  # for the validation loss
    test = load_dataset(args.dataset, "valid", root)  # grey levels and labels, for maps and classifier
    epochs, hidden, batch_size, clf_epochs = DEFAULTS[args.dataset]
    epochs, clf_epochs = args.epochs or epochs, args.classifier_epochs or clf_epochs
    shape = train.image_shape
    out = Path(args.out)

    # 1. the two models: the same encoder trunk and decoder, a 2-D latent space
    models = {}
    for name, build in (("AE", build_autoencoder), ("VAE", build_vae)):
        torch.manual_seed(args.seed)
        model = build(shape, z_dim=args.z_dim, hidden_dims=(hidden,))
        t0 = time.perf_counter()
        history = Trainer(model, train, valid, lr=args.lr, batch_size=batch_size, seed=args.seed).run(epochs)
        loss = "reconstruction loss" if name == "AE" else "-ELBO"
        print(
            f"{name}: {epochs} epochs in {time.perf_counter() - t0:.0f} s, validation {loss} "
            f"{history.valid_loss[-1]:.2f} nats per image"
        )
        models[name] = model.eval()

    # 2. an independent judge: a small CNN trained on the real labelled images
    t0 = time.perf_counter()
    clf = train_classifier(load_dataset(args.dataset, "train", root), epochs=clf_epochs, seed=args.seed)
    print(f"classifier: {time.perf_counter() - t0:.0f} s, test accuracy {classifier_accuracy(clf, test.x, test.y):.3f}")

    # 3. dead zones, as numbers
    reports = {name: dead_zone_report(m, test.x, clf, n_draws=args.draws, seed=args.seed) for name, m in models.items()}
    table = dead_zone_table(list(reports.values()), list(reports))
    print(f"\n{len(test)} test images of {args.dataset}, {args.draws} draws u ~ N(0, I) per model")
    print(table)

    # 4. the figures
    panels = [
        plots.latent_map_panel(
            m,
            test.x,
            test.y,
            title=f"{name}: " + ("codes, standardized (z-score)" if name == "AE" else "encoder means E_q[z|x]"),
            draws=args.draws,
            seed=args.seed,
        )
        for name, m in models.items()
    ]
    written = [plots.plot_latent_maps(panels, out / "latent_maps.png")]
    manifolds = {
        f"{name}: decoded at Gaussian quantiles": plots.decode_manifold(m, args.grid, latent_codes(m, test.x))
        for name, m in models.items()
    }
    written.append(plots.plot_image_grids(manifolds, shape, out / "manifolds.png", nrow=args.grid))
    torch.manual_seed(args.seed)
    samples = {f"{name}: decoded z ~ N(0, I) (model.sample)": m.sample(64) for name, m in models.items()}
    written.append(plots.plot_image_grids(samples, shape, out / "samples.png", nrow=8))
    for name, m in models.items():
        written.append(
            plots.save_interpolations(
                m, test.x[:6], test.x[6:12], shape, out / f"interpolations_{name.lower()}.png", steps=10
            )
        )
    (out / "dead_zones.md").write_text(table + "\n")
    (out / "dead_zones.json").write_text(json.dumps(reports, indent=2))
    print(f"\nwrote {', '.join(p.name for p in written)}, dead_zones.md and dead_zones.json to {out}")
    return reports


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="AE versus VAE: latent maps, manifolds and dead zones.")
    p.add_argument(
        "--dataset",
        default="mnist10k",
        choices=sorted(DEFAULTS),
        help="mnist10k: 8,000 labelled MNIST test images to train, 2,000 to test (default)",
    )
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ../shared/data)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: 40 mnist10k, 150 digits)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=2)
    p.add_argument("--classifier-epochs", type=int, default=None, help="default: 5 mnist10k, 40 digits")
    p.add_argument("--draws", type=int, default=2000, help="N(0, I) draws for the dead-zone numbers")
    p.add_argument("--grid", type=int, default=15, help="side of the decoded manifold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latent_space")
    main(p.parse_args())
