"""A VAE with a global latent: a Bayesian decoder bias shared by every data point.

    b ~ N(0, I_D)                                   (one draw for the whole data set)
    z_n ~ N(0, I_d),  x_n | z_n, b ~ Bernoulli(logits = f_θ(z_n) + b)   for n in the data plate

The global site ``bias`` sits outside the data plate, so when a minibatch of B points
stands for N (``num_data=N``) only the sites inside the plate are scaled by N/B: the
KL of the global latent is counted once, as it appears once in the full-data ELBO

    ELBO = E_q[log p(b) − log q(b)] + Σ_n E_q[log p(x_n | z_n, b) + log p(z_n) − log q(z_n | x_n)].

The guide is q(b) q(z|x): Pyro's ``AutoNormal`` for the global site (the model with
every other site hidden) and the VAE's amortized encoder for z. Trained by plain
``pyro.infer.SVI``; the script prints the ELBO and how far q(b) has moved from the prior.

    python examples/global_latent.py --epochs 20
"""

import argparse
import math

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import pyro_method

from pyro_vae import VAE, MLPDecoder, MLPEncoder, load_dataset


class BayesianBiasVAE(VAE):
    """The VAE of :mod:`pyro_vae.models` with a global latent decoder bias b ~ N(0, I_D).

    :param image_shape: ``(C, H, W)``; D = C·H·W.
    :param int z_dim: d.
    :param hidden_dims: hidden sizes of the encoder (the decoder mirrors them).
    """

    def __init__(self, image_shape, z_dim=8, hidden_dims=(128,)):
        x_dim = math.prod(image_shape)
        encoder = MLPEncoder(x_dim, z_dim, tuple(hidden_dims))
        decoder = MLPDecoder(z_dim, x_dim, tuple(hidden_dims)[::-1])
        super().__init__(encoder, decoder, z_dim, likelihood="bernoulli", x_dim=x_dim)

    def bias_prior(self):
        """p(b) = N(0, I_D), event shape ``(D,)``."""
        zero = self._zero.new_zeros(self.x_dim)
        return dist.Normal(zero, torch.ones_like(zero)).to_event(1)

    @pyro_method
    def model(self, x=None, batch_size=None, num_data=None):
        """p(b) Π_n p(z_n) p(x_n | z_n, b); ``num_data`` scales the plate only."""
        batch_size = self._batch_size(x, batch_size)
        decoder, likelihood = self.decoder, self.likelihood
        bias = pyro.sample("bias", self.bias_prior())  # global: outside the data plate
        with self.plate(batch_size, num_data, device=self._zero.device):
            z = pyro.sample("z", self.prior((batch_size,)))
            return pyro.sample("x", likelihood(decoder(z) + bias), obs=x)


def make_guide(vae):
    """q(b) q(z|x): ``AutoNormal`` over the global site, the amortized encoder for z."""
    global_guide = AutoNormal(poutine.block(vae.model, expose=["bias"]))

    def guide(x, batch_size=None, num_data=None):
        global_guide(x, num_data=num_data)
        return vae.guide(x, num_data=num_data)

    guide.global_guide = global_guide
    return guide


def main(args):
    pyro.set_rng_seed(args.seed)
    train = load_dataset(args.dataset, "train", args.data, binarize="static", seed=args.seed)
    valid = load_dataset(args.dataset, "valid", args.data, binarize="static", seed=args.seed)
    vae = BayesianBiasVAE(train.image_shape, z_dim=args.z_dim, hidden_dims=(args.hidden,))
    guide = make_guide(vae)
    elbo = Trace_ELBO()
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": args.lr}), elbo)
    generator = torch.Generator().manual_seed(args.seed)
    n = len(train)
    for epoch in range(args.epochs):
        total = 0.0
        for x, _ in train.batches(args.batch_size, generator=generator):
            total += svi.step(x, num_data=n)  # the batch stands for N points
        if epoch == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1}: train -ELBO {total / math.ceil(n / args.batch_size) / n:.2f} nats per image")
    with torch.no_grad():
        valid_loss = elbo.loss(vae.model, guide, valid.x) / len(valid)  # one batch: the whole set
        scale = pyro.param("AutoNormal.scales.bias")
    print(f"valid -ELBO {valid_loss:.2f} nats per image (the global KL counted once)")
    print(
        f"q(b): posterior scale of the {vae.x_dim} bias coordinates, median {scale.median():.3f} "
        f"(prior 1); a global latent learns from all {n} images at once"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="A VAE with a global latent decoder bias, trained with SVI.")
    p.add_argument("--dataset", default="digits", choices=["digits", "binarized-mnist"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    main(p.parse_args())
