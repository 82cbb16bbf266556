"""Swap the guide, keep the model: diagonal, full-covariance and flow posteriors, and your own.

The same VAE model (prior, decoder, likelihood) is trained with three guide families
q(z|x), chosen by one argument (``build_vae(..., guide="full")``), plus a family written
here in ten lines (a low-rank-plus-diagonal Gaussian, Pyro's LowRankMultivariateNormal).
Each trained model is then judged against the truth:

- NLL by importance sampling (K samples) and the ELBO on validation points;
- the share of validation points whose importance weights p(x,z)/q(z|x) have a Pareto
  k̂ < 0.7 (PSIS, ArviZ): where log p̂(x) can be trusted;
- for one point, NUTS on the trained decoder's p(z|x), R-hat/ESS, KL estimates both ways and
  a pair plot of NUTS draws against the guide's (ArviZ);
- the amortization gap: the ELBO of the encoder against the same family fitted to each point.

    python examples/guides.py                                   # scikit-learn digits, offline, minutes
    python examples/guides.py --dataset binarized-mnist --data ../shared/data --limit 10000
"""

import argparse
import json
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import build_vae, load_dataset
from pyro_vae.eval import amortization_gap, importance_sampling
from pyro_vae.eval import posterior as P
from pyro_vae.guides import GUIDES
from pyro_vae.plots import plot_posterior_pairs
from pyro_vae.train.trainer import Trainer


class LowRankNormal(nn.Module):
    r"""A user's own guide family: q(z|x) = N(μ(x), diag d(x) + v(x) v(x)ᵀ), rank one.

    A family is a module built as ``Family(encoder, z_dim=d)``; ``encoder_out_dims`` tells
    ``build_vae`` which encoder outputs to build; ``forward(x)`` returns a distribution with
    ``batch_shape == (batch,)``, ``event_shape == (d,)``.
    """

    def __init__(self, encoder, z_dim=None):
        super().__init__()
        self.encoder, self.z_dim = encoder, z_dim

    @staticmethod
    def encoder_out_dims(z_dim):
        return (z_dim, z_dim, z_dim)  # μ, log d, v

    def forward(self, x):
        loc, log_diag, factor = self.encoder(x)
        return dist.LowRankMultivariateNormal(loc, factor.unsqueeze(-1), log_diag.exp())


GUIDES["lowrank"] = LowRankNormal  # registered by name: run folders and --guide lowrank find it


def main(args):
    binarize = None if args.dataset == "binarized-mnist" else "dynamic"
    train = load_dataset(args.dataset, "train", args.data, binarize=binarize)
    valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize)
    if args.limit:
        train.x = train.x[: args.limit]
    x_eval = valid.x[: args.eval_points]
    out = Path(args.out)
    rows = []
    for name in args.guides:
        pyro.set_rng_seed(args.seed)
        torch.manual_seed(args.seed)
        vae = build_vae(train.image_shape, z_dim=args.z_dim, hidden_dims=(args.hidden,), guide=name)
        trainer = Trainer(
            vae,
            train,
            objective=args.objective,
            particles=args.particles,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        history = trainer.run(args.epochs, progress=True)
        sec = sum(history.epoch_seconds) / len(history.epoch_seconds)
        vae.eval()
        t0 = time.perf_counter()
        stats = importance_sampling(vae, x_eval, num_samples=args.nll_samples, progress=True)
        share, khat = P.khat_share(vae, x_eval, num_samples=args.khat_samples)
        x = valid.x[args.index]
        idata = P.nuts_posterior(
            vae, x, num_samples=args.nuts_samples, warmup_steps=args.nuts_samples, jit_compile=True, seed=args.seed
        )
        cmp = P.compare_to_nuts(vae, x, idata, num_samples=args.khat_samples)
        png = plot_posterior_pairs(
            idata,
            {name: P.guide_draws(vae, x)},
            out / f"posterior_{name}.png",
            title=f"{args.dataset} valid[{args.index}]: NUTS vs the {name} guide (k̂ = {cmp['khat']:.2f})",
        )
        gap = amortization_gap(vae, x_eval[: args.gap_points], steps=args.gap_steps)
        row = dict(
            guide=name,
            sec_per_epoch=sec,
            train_neg_elbo=history.train_loss[-1],
            nll=-stats["log_px"].mean().item(),
            nll_se=stats["log_px"].std().item() / len(x_eval) ** 0.5,
            neg_elbo=-stats["elbo"].mean().item(),
            khat_share=share,
            khat_median=khat.median().item(),
            gap=gap["gap"].mean().item(),
            gap_se=gap["gap"].std().item() / args.gap_points**0.5,
            point=cmp,
            eval_seconds=time.perf_counter() - t0,
            figure=str(png),
            log_px=stats["log_px"].tolist(),
        )
        rows.append(row)
        print(
            f"{name}: NLL {row['nll']:.2f} ± {row['nll_se']:.2f}, -ELBO {row['neg_elbo']:.2f}, "
            f"k̂ < 0.7 for {share:.0%}, amortization gap {row['gap']:.2f} ± {row['gap_se']:.2f} nats, "
            f"{sec:.1f} s/epoch; valid[{args.index}]: k̂ {cmp['khat']:.2f}, KL(q‖p) {cmp['kl_q_p']:.2f}, "
            f"KL(p‖q) {cmp['kl_p_q']:.2f}, R-hat {cmp['max_rhat']:.3f}"
        )
    print()
    print(
        f"| guide | NLL (K={args.nll_samples}) | −ELBO | share k̂ < 0.7 | amortization gap | "
        f"KL(q‖p) / KL(p‖q) at valid[{args.index}] | s/epoch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['guide']} | {r['nll']:.2f} ± {r['nll_se']:.2f} | {r['neg_elbo']:.2f} | {r['khat_share']:.2f} | "
            f"{r['gap']:.2f} ± {r['gap_se']:.2f} | {r['point']['kl_q_p']:.2f} / {r['point']['kl_p_q']:.2f} | "
            f"{r['sec_per_epoch']:.1f} |"
        )
    first = torch.tensor(rows[0]["log_px"])
    for r in rows[1:]:  # the same points for every guide: the paired difference is sharper than the table's ±
        diff = first - torch.tensor(r["log_px"])
        r["nll_minus_first"], r["nll_minus_first_se"] = diff.mean().item(), diff.std().item() / len(diff) ** 0.5
        print(
            f"NLL({r['guide']}) − NLL({rows[0]['guide']}) = {r['nll_minus_first']:.2f} ± "
            f"{r['nll_minus_first_se']:.2f} nats (paired over the {len(diff)} points)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "guides.json").write_text(json.dumps(dict(settings=vars(args), results=rows), indent=2))
    print(f"wrote {out / 'guides.json'} and the pair plots in {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Compare guide families against NUTS.")
    p.add_argument("--dataset", default="digits", choices=["digits", "binarized-mnist"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--guides", nargs="+", default=["diagonal", "full", "flow", "lowrank"])
    p.add_argument("--objective", default="elbo", help="elbo, meanfield or iwae")
    p.add_argument("--particles", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--eval-points", type=int, default=200, help="validation points for NLL, ELBO and k̂")
    p.add_argument("--nll-samples", type=int, default=5000, help="K of the importance-sampled NLL")
    p.add_argument("--khat-samples", type=int, default=1000, help="draws of q(z|x) per point for k̂")
    p.add_argument("--index", type=int, default=17, help="the validation point for NUTS")
    p.add_argument("--nuts-samples", type=int, default=300, help="NUTS warm-up steps and draws per chain")
    p.add_argument("--gap-points", type=int, default=20, help="points for the amortization gap")
    p.add_argument("--gap-steps", type=int, default=200, help="Adam steps of each local fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/example-guides")
    main(p.parse_args())
