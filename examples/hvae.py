"""One stochastic layer against two, trained the same way with Pyro's SVI.

The two-layer model p(z2) p(z1 | z2) p(x | z1, z2) and its guide q(z2 | x) q(z1 | x, z2) are
Pyro programs like the one-layer VAE's, so the same ``SVI`` loop, the same
``TraceMeanField_ELBO`` (closed-form KL for both layers) and the same importance-sampled
log p(x) take either. The script prints each model's held-out NLL and writes their samples.

    python examples/hvae.py                                   # scikit-learn digits, offline, ~1 min
    python examples/hvae.py --dataset binarized-mnist --data ../shared/data --epochs 10 --hidden 300
"""

import argparse
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from tqdm import trange

from pyro_vae import load_dataset, log_likelihood
from pyro_vae.models import build_hvae, build_vae
from pyro_vae.plots import save_grid


def train(model, data, args):
    """Adam on the closed-form-KL ELBO, ``args.epochs`` passes in minibatches."""
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": args.lr}), TraceMeanField_ELBO())
    generator = torch.Generator().manual_seed(args.seed)
    for _ in trange(args.epochs, desc=type(model).__name__, disable=args.no_progress):
        for x, _ in data.batches(args.batch_size, generator=generator):
            svi.step(x, num_data=len(data))


def main(args):
    pyro.set_rng_seed(args.seed)
    binarize = None if args.dataset == "binarized-mnist" else "dynamic"
    train_data = load_dataset(args.dataset, "train", args.data, binarize=binarize, seed=args.seed)
    valid = load_dataset(args.dataset, "valid", args.data, binarize="static" if binarize else None, seed=args.seed)
    shape = train_data.image_shape
    models = {
        "one layer": build_vae(shape, z_dim=2 * args.z_dim, hidden_dims=(args.hidden, args.hidden)),
        "two layers": build_hvae(shape, z_dim=args.z_dim, hidden_dims=(args.hidden, args.hidden)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = valid.x[: args.eval_points]
    for name, model in models.items():
        train(model, train_data, args)
        model.eval()
        nll = -log_likelihood(model.model, model.guide, x, num_samples=args.nll_samples).mean().item()
        print(
            f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
            f"NLL {nll:.2f} nats per image (valid, {len(x)} images, K = {args.nll_samples})"
        )
        path = out / f"samples_{name.replace(' ', '_')}.png"
        save_grid(model.sample(64), shape, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", default="digits", help="digits (offline) or binarized-mnist")
    p.add_argument("--data", default=None, help="data folder (binarized-mnist); default $PYRO_VAE_DATA")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", type=int, default=64, help="width of every hidden layer")
    p.add_argument("--z-dim", type=int, default=4, help="d1 = d2 of the two-layer model (the one-layer model: 2d)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-points", type=int, default=300)
    p.add_argument("--nll-samples", type=int, default=1000, help="K, importance samples per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hvae_example")
    p.add_argument("--no-progress", action="store_true")
    main(p.parse_args())
