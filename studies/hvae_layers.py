r"""Where a two-layer VAE's nats go: the ELBO's terms per stochastic layer, the active units
per layer, and the gap between training and validation data.

    python studies/hvae_layers.py results/runs/hvae-vamp --data ../shared/data --out layers.json

For a :class:`~pyro_vae.models.HierarchicalVAE`, per data point, with z2 ~ q(z2|x) and
z1 ~ q(z1|x, z2) (S draws each, the means over the draws and the data points reported):

    −ELBO(x) = −E_q[log p(x | z1, z2)] + KL_2 + KL_1,
    KL_2 = E_q[log q(z2 | x) − log p(z2)]                      (the top layer's rate),
    KL_1 = E_q[log q(z1 | x, z2) − log p(z1 | z2)]              (the bottom layer's rate).

A unit is active (Burda et al. 2015) when Cov_x(E_q[z_u | x]) > 10⁻²: for z2 the guide's
mean μ2(x), for z1 the mean of q(z1 | x, z2 = μ2(x)).
"""

import argparse
import json
import sys
from pathlib import Path

import pyro
import torch
from pyro import poutine

from pyro_vae import load_dataset, load_run


@torch.no_grad()
def layer_terms(model, x, num_samples=10, batch_size=500):
    """Per data point: ``{"log_px_given_z", "kl2", "kl1"}``, each ``(N,)``, Monte Carlo over
    ``num_samples`` draws of the guide."""
    out = {"log_px_given_z": [], "kl2": [], "kl1": []}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        with pyro.plate("_particles", num_samples, dim=-2):
            guide = poutine.trace(model.guide).get_trace(xb)
            trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(xb)
        for site in ("z2", "z1", "x"):
            trace.nodes[site]["lp"] = trace.nodes[site]["fn"].log_prob(trace.nodes[site]["value"])
        for site in ("z2", "z1"):
            guide.nodes[site]["lp"] = guide.nodes[site]["fn"].log_prob(guide.nodes[site]["value"])
        out["log_px_given_z"].append(trace.nodes["x"]["lp"].mean(0))
        out["kl2"].append((guide.nodes["z2"]["lp"] - trace.nodes["z2"]["lp"]).mean(0))
        out["kl1"].append((guide.nodes["z1"]["lp"] - trace.nodes["z1"]["lp"]).mean(0))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def active_units_per_layer(model, x, threshold=1e-2, batch_size=1000):
    """``{"z1": (active, units), "z2": (active, units)}`` from :meth:`HierarchicalVAE.encode_layers`."""
    means = [model.encode_layers(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    z1 = torch.cat([m[0] for m in means]).double().var(0)
    z2 = torch.cat([m[1] for m in means]).double().var(0)
    return {"z1": (int((z1 > threshold).sum()), z1.numel()), "z2": (int((z2 > threshold).sum()), z2.numel())}


def report(model, x, num_samples):
    """The −ELBO, its three terms and the active units per layer over the images ``x``."""
    terms = layer_terms(model, x, num_samples)
    mean = {k: v.mean().item() for k, v in terms.items()}
    neg_elbo = -mean["log_px_given_z"] + mean["kl2"] + mean["kl1"]
    return dict(
        n=int(x.shape[0]),
        neg_elbo=neg_elbo,
        reconstruction=-mean["log_px_given_z"],
        kl2=mean["kl2"],
        kl1=mean["kl1"],
        active_units=active_units_per_layer(model, x),
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("run_dir", help="a run folder of --model hvae")
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA, else ./data)")
    p.add_argument("--samples", type=int, default=10, help="draws of the guide per data point")
    p.add_argument("--train-limit", type=int, default=10000, help="training images for the train/valid gap")
    p.add_argument("--weights", default="best", choices=["best", "last", "raw"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    model, run = load_run(args.run_dir, weights=args.weights)
    if run["model"].get("model") != "hvae":
        sys.exit(f"{args.run_dir} holds a {run['model'].get('model')!r} model; this study reads --model hvae runs")
    dataset = run["data"]["dataset"]
    result = {}
    for split, limit in (("train", args.train_limit), ("valid", None)):
        data = load_dataset(
            dataset, split, args.data, binarize=run["data"].get("binarize"), seed=run["data"].get("seed", 0)
        )
        result[split] = report(model, data.x[:limit], args.samples)
    for split, r in result.items():
        au = r["active_units"]
        print(
            f"{split:5s} ({r['n']} images): -ELBO {r['neg_elbo']:.2f} = reconstruction {r['reconstruction']:.2f}"
            f" + KL(z2) {r['kl2']:.2f} + KL(z1) {r['kl1']:.2f}; active units z2 {au['z2'][0]} of {au['z2'][1]},"
            f" z1 {au['z1'][0]} of {au['z1'][1]}"
        )
    print(f"valid − train −ELBO: {result['valid']['neg_elbo'] - result['train']['neg_elbo']:.2f} nats")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
