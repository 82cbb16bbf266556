"""An amortized guide for a Pyro model of one's own: a two-layer hierarchical VAE.

    z2_n ~ N(0, I_2),   z1_n | z2_n ~ N(μ(z2_n), diag σ²(z2_n)),   x_n | z1_n ~ Bernoulli(logits = f(z1_n))

written as a plain Pyro model (a ``PyroModule`` with its own networks), with two latent
sites in the data plate. ``AmortizedGuide(model.model, family=...)`` finds both sites and
encodes them jointly, q(z1, z2 | x), with each family of :mod:`pyro_vae.guides`: the
diagonal family factorizes the two layers, the full-covariance and flow families
couple them. Each is trained with ``pyro_vae.fit`` and scored by its validation ELBO
and importance-sampled log-likelihood; the figure shows both.

    python examples/amortized_guide.py --epochs 100 --out runs/amortized-guide
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from pyro_vae import AmortizedGuide, MLPDecoder, MLPEncoder, ModelGuide, fit, load_dataset, log_likelihood
from pyro_vae.eval import elbo


class TwoLayerVAE(PyroModule):
    """p(z2) p(z1 | z2) p(x | z1); ``num_data`` scales the data plate by N/B."""

    def __init__(self, x_dim, z1_dim=8, z2_dim=2, hidden=128):
        super().__init__(name="two_layer")
        self.z2_dim = z2_dim
        self.top = MLPEncoder(z2_dim, z1_dim, (hidden,))  # z2 -> (μ, log σ²) of z1
        self.bottom = MLPDecoder(z1_dim, x_dim, (hidden,))  # z1 -> Bernoulli logits

    @pyro_method
    def model(self, x, num_data=None):
        top, bottom = self.top, self.bottom
        B = x.shape[0]
        with pyro.plate("data", B), poutine.scale(scale=(num_data or B) / B):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(B, self.z2_dim), 1.0).to_event(1))
            loc, log_var = top(z2)
            z1 = pyro.sample("z1", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=bottom(z1)).to_event(1), obs=x)


def main(args):
    pyro.set_rng_seed(args.seed)
    train = load_dataset(args.dataset, "train", args.data, binarize="static", seed=args.seed)
    valid = load_dataset(args.dataset, "valid", args.data, binarize="static", seed=args.seed)
    results = {}
    for family in args.families:
        torch.manual_seed(args.seed)
        model = TwoLayerVAE(train.x_dim, hidden=args.hidden)
        guide = AmortizedGuide(model.model, family=family, hidden_dims=(args.hidden,))
        history = fit(
            ModelGuide(model.model, guide),
            train,
            valid,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=False,
        )
        x = valid.x[: args.eval_points]
        pyro.set_rng_seed(args.seed)
        nll = -log_likelihood(model.model, guide, x, num_samples=args.nll_samples).mean().item()
        neg_elbo = -elbo(model.model, guide, x, num_samples=100).mean().item()
        results[family] = dict(history=history.valid_loss, nll=nll, neg_elbo=neg_elbo)
        print(
            f"{family:9s} valid -ELBO {neg_elbo:7.2f}   NLL {nll:7.2f}   gap {neg_elbo - nll:5.2f} nats per image "
            f"({len(x)} images, K={args.nll_samples})"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for family, r in results.items():
        ax1.plot(range(1, len(r["history"]) + 1), r["history"], label=family)
    ax1.set(xlabel="epoch", ylabel="validation -ELBO (nats per image)", title="two-layer VAE, one amortized guide")
    ax1.legend()
    ax1.grid(alpha=0.3)
    names = list(results)
    ax2.bar([i - 0.2 for i in range(len(names))], [results[n]["neg_elbo"] for n in names], 0.4, label="-ELBO")
    ax2.bar(
        [i + 0.2 for i in range(len(names))],
        [results[n]["nll"] for n in names],
        0.4,
        label=f"NLL (K={args.nll_samples})",
    )
    lo = min(min(r["nll"], r["neg_elbo"]) for r in results.values())
    ax2.set(
        xticks=range(len(names)), xticklabels=names, ylabel="nats per image", ylim=(lo - 2, None), title="guide family"
    )
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "amortized_guide.png")
    print(f"wrote {out / 'amortized_guide.png'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="An AmortizedGuide for a two-layer hierarchical VAE, three families.")
    p.add_argument("--dataset", default="digits", choices=["digits", "binarized-mnist"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--families", nargs="+", default=["diagonal", "full", "flow"])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--eval-points", type=int, default=300, help="validation images scored")
    p.add_argument("--nll-samples", type=int, default=1000, help="importance samples K per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/amortized-guide")
    main(p.parse_args())
