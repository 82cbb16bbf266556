"""Why the reparameterization trick matters: the score-function and the reparameterized
gradient, measured with Pyro's own ELBOs.

1. The toy of Example 1.5: ∇φ E[x²] with x ~ q_φ = N(φ, 1). A non-reparameterized guide
   site under ``TraceGraph_ELBO`` gives the score-function estimate x²(x − φ) per sample;
   an ordinary (reparameterized) site under ``Trace_ELBO`` gives 2(φ + ε). Both average
   to 2φ; their variances, 4 and φ⁴ + 14φ² + 15, are measured against N.
2. The same contrast on a VAE: its guide's z site made non-reparameterized
   (``guide_kwargs={"reparameterized": False, "baseline": ...}``), trained with
   ``pyro.infer.SVI`` and ``TraceGraph_ELBO``, without and with Pyro's baselines, against
   the usual reparameterized VAE under ``Trace_ELBO``.

    python examples/score_function.py                     # scikit-learn digits, offline, ~1 min
    python examples/score_function.py --dataset binarized-mnist --data ../shared/data --limit 10000
"""

import argparse
import copy
import sys
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from pyro_vae import build_vae, evaluate_loss, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))  # the study's toy and estimators
from gradient_variance import toy_guide, toy_model, toy_variance, vae_gradient_variance  # noqa: E402


def toy(args):
    """Part 1: R repetitions (a plate over R copies of φ) of the mean of N samples
    (vectorized particles); the gradient lands in phi.grad."""
    print("∇φ E[x²] at φ: variance of the mean of N samples, times N (closed form in brackets)")
    for phi in args.phis:
        for name, elbo_class, reparameterized, prior in [
            ("reparameterized, Trace_ELBO", Trace_ELBO, True, "flat"),
            ("score function, TraceGraph_ELBO", TraceGraph_ELBO, False, "frozen"),
        ]:
            line = []
            for n in (10, 100, 1000):
                phis = torch.full((args.repeats,), phi, dtype=torch.float64, requires_grad=True)
                elbo = elbo_class(num_particles=n, vectorize_particles=True, max_plate_nesting=1)
                if reparameterized:
                    elbo.differentiable_loss(toy_model, toy_guide, phis, reparameterized, prior).backward()
                else:  # TraceGraph_ELBO backpropagates its surrogate loss itself
                    elbo.loss_and_grads(toy_model, toy_guide, phis, reparameterized, prior)
                g = phis.grad
                line.append(f"N={n}: mean {g.mean():+.3f}, N·Var {n * g.var():6.2f}")
            key = "reparam" if reparameterized else "score"
            print(f"  φ={phi:g} {name:32s} " + "; ".join(line) + f"  [{toy_variance(key, phi):.0f}]")


def vae(args):
    """Part 2: four VAEs from the same initial weights, trained over the same batches."""
    binarize = None if args.dataset == "binarized-mnist" else "static"
    train = load_dataset(args.dataset, "train", args.data, binarize=binarize)
    valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize)
    train.x = train.x[: args.limit]
    small = train.image_shape[-1] <= 8
    torch.manual_seed(args.seed)
    initial = build_vae(train.image_shape, z_dim=8 if small else 50, hidden_dims=(128,) if small else (400,))
    x = valid.x[: args.batch_size]
    print(f"\nVAE on {args.dataset} ({len(train)} images): encoder-gradient variance at the initial weights")
    for row in vae_gradient_variance(initial, x, train, repeats=100, settle_steps=100, progress=False):
        print(
            f"  {row['route']:16s} mean per-parameter variance {row['mean_var']:.3g} "
            f"({row['ratio']:.3g} × the reparameterized)"
        )
    print(f"validation −ELBO after {args.epochs} epochs of SVI (nats per image):")
    runs = [
        ("reparameterized", {}, Trace_ELBO()),
        ("score function", {"reparameterized": False}, TraceGraph_ELBO()),
        ("score + decaying", {"reparameterized": False, "baseline": "decaying"}, TraceGraph_ELBO()),
        ("score + neural", {"reparameterized": False, "baseline": "neural"}, TraceGraph_ELBO()),
    ]
    for name, guide_kwargs, elbo in runs:
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        model = build_vae(
            train.image_shape, z_dim=initial.z_dim, hidden_dims=initial.config["hidden_dims"], guide_kwargs=guide_kwargs
        )
        model.load_state_dict(copy.deepcopy(initial.state_dict()), strict=False)  # + a baseline network
        svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": args.lr}), elbo)
        generator = torch.Generator().manual_seed(args.seed)
        for _ in range(args.epochs):
            # equal batches: the decaying average is kept per position in the batch
            for xb, _ in train.batches(args.batch_size, generator=generator, drop_last=True):
                svi.step(xb, num_data=len(train))
        print(f"  {name:18s} {evaluate_loss(model, valid):.2f}")


def main(args):
    pyro.set_rng_seed(args.seed)
    toy(args)
    vae(args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Score-function against reparameterized gradients.")
    p.add_argument("--phis", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    p.add_argument("--repeats", type=int, default=500, help="repetitions R of each estimate")
    p.add_argument("--dataset", default="digits", choices=["digits", "binarized-mnist", "mnist10k"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    main(p.parse_args())
