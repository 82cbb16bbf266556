"""A variational autoencoder, written and trained the Pyro way.

Networks → a VAE (model and guide) → ``pyro.infer.SVI`` → samples. The model and the
guide are ordinary Pyro programs, so this script trains them with Pyro's own SVI loop and
``pyro.optim.Adam``; ``pyro_vae.fit`` does the same with less per-step overhead.

    python examples/vae.py                                  # scikit-learn digits, offline, < 1 min
    python examples/vae.py --dataset binarized-mnist --data ../shared/data --epochs 5
"""

import argparse
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm import trange

from pyro_vae import VAE, MLPDecoder, MLPEncoder, evaluate_loss, load_dataset
from pyro_vae.plots import save_grid


def main(args):
    pyro.set_rng_seed(args.seed)
    binarize = None if args.dataset == "binarized-mnist" else "dynamic"
    train = load_dataset(args.dataset, "train", args.data, binarize=binarize)
    valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize)

    # 1. networks: plain torch modules
    encoder = MLPEncoder(train.x_dim, args.z_dim, hidden_dims=(args.hidden,))  # x -> (μ, log σ²)
    decoder = MLPDecoder(args.z_dim, train.x_dim, hidden_dims=(args.hidden,))  # z -> Bernoulli logits
    # 2. the VAE: model p(z) p(x|z) and guide q(z|x) in a data plate
    vae = VAE(encoder, decoder, z_dim=args.z_dim, likelihood="bernoulli")
    # 3. SVI
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())
    generator = torch.Generator().manual_seed(args.seed)
    for _ in trange(args.epochs, desc="epochs"):
        for x, _ in train.batches(args.batch_size, generator=generator):
            svi.step(x, num_data=len(train))  # the batch stands for N points: scaled by N/B
    print(f"validation -ELBO after {args.epochs} epochs: {evaluate_loss(vae, valid):.2f} nats per image")
    # 4. generation: z ~ p(z), decoded
    out = Path(args.out)
    save_grid(vae.sample(64), train.image_shape, out / "samples.png")
    save_grid(torch.cat([valid.x[:8], vae.reconstruct(valid.x[:8])]), train.image_shape, out / "reconstructions.png")
    print(f"wrote {out / 'samples.png'} and {out / 'reconstructions.png'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Train a VAE with pyro.infer.SVI.")
    p.add_argument("--dataset", default="digits", choices=["digits", "binarized-mnist", "mnist10k"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/example-vae")
    main(p.parse_args())
