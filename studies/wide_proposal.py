r"""Does a wider proposal than the guide move a run's importance-sampled log p(x)?

    python studies/wide_proposal.py results/runs/hvae-p200 --data ../shared/data --split train --limit 200

For each proposal r(z | x) the study prints the mean over the images of

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / r(z_k | x),   z_k ~ r(z | x),

from :func:`pyro_vae.eval.log_likelihood` with the run's model and the proposal as its guide.
Every proposal keeps the guide's program and replaces each latent site's
``Normal(μ, σ).to_event(d)`` by ``Normal(μ, τσ)`` (``normal:τ``) or by a Student-t of ν degrees
of freedom, ``StudentT(ν, μ, τσ)`` (``t:ν:τ``). Any proposal of full support gives an estimate
whose expectation is at most log p(x), so a proposal that raises the mean estimate brings it
closer to log p(x). Each proposal's draws start from the same seed.
"""

import argparse
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from pyro_vae import load_dataset, load_run
from pyro_vae.eval import log_likelihood


class Widen(Messenger):
    r"""Replace each latent ``Normal(μ, σ)`` site (any ``to_event``) of the wrapped program by
    ``Normal(μ, τσ)``, or by ``StudentT(ν, μ, τσ)`` when ``df`` = ν is given."""

    def __init__(self, tau=1.0, df=None):
        super().__init__()
        self.tau, self.df = tau, df

    def _pyro_sample(self, msg):
        if msg["is_observed"]:
            return
        fn, event_dims = msg["fn"], 0
        while isinstance(fn, dist.Independent):
            event_dims += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if not isinstance(fn, dist.Normal):  # a plate's subsample site, or another family
            return
        scale = fn.scale * self.tau
        base = dist.Normal(fn.loc, scale) if self.df is None else dist.StudentT(self.df, fn.loc, scale)
        msg["fn"] = base.to_event(event_dims) if event_dims else base


def proposal(spec):
    """``normal:τ`` or ``t:ν:τ`` → :class:`Widen`."""
    kind, *values = spec.split(":")
    try:
        if kind == "normal" and len(values) == 1:
            return Widen(tau=float(values[0]))
        if kind == "t" and len(values) == 2:
            return Widen(tau=float(values[1]), df=float(values[0]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"proposal {spec!r}: write normal:TAU or t:DF:TAU")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (its best weights)")
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--split", default="train", help="images to score (default train)")
    p.add_argument("--limit", type=int, default=200, help="the first N images (default 200)")
    p.add_argument("-K", "--num-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--proposals",
        nargs="+",
        type=proposal,
        default=[proposal(s) for s in ("normal:1", "normal:1.1", "normal:1.2", "t:10:1", "t:5:1")],
        metavar="SPEC",
        help="normal:TAU or t:DF:TAU (default: normal:1 normal:1.1 normal:1.2 t:10:1 t:5:1)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, run = load_run(args.run)
    x = load_dataset(run["data"]["dataset"], args.split, root=args.data).x[: args.limit]
    print(f"{args.run}: {x.shape[0]} {args.split} images, K={args.num_samples}, NLL = −(mean log p̂(x)) in nats")
    for w in args.proposals:
        pyro.set_rng_seed(args.seed)
        t0 = time.perf_counter()
        log_px, stderr = log_likelihood(
            model.model, w(model.guide), x, num_samples=args.num_samples, return_stderr=True
        )
        name = f"normal τ={w.tau:g}" if w.df is None else f"Student-t ν={w.df:g} τ={w.tau:g}"
        mc = stderr.pow(2).mean().sqrt() / x.shape[0] ** 0.5
        print(f"  {name:24s} NLL {-log_px.mean():9.4f}  (Monte Carlo ± {mc:.4f}; {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
