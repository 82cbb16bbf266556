"""``pyro-vae sample``: a PNG grid of samples of a trained run."""

from pathlib import Path

import torch

from ..contract import contract
from ..plots import save_class_samples, save_samples
from ..runs import load_run
from .common import check_device, positive_int


def add_arguments(p):
    p.add_argument("run_dir", help="a run folder written by pyro-vae train")
    p.add_argument("-n", type=positive_int, default=64, help="number of samples")
    p.add_argument("--out", default=None, help="PNG path; if not given: RUN_DIR/samples.png")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    p.add_argument("--seed", type=int, default=0, help="seed of z ~ p(z)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:N for GPU N)")


def run(args):
    check_device(args.device)
    model, run = load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    shape = tuple(run["model"]["image_shape"])
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    k = contract(model).num_classes
    if k:  # class-conditional VAE: n split over classes
        save_class_samples(model, shape, out, n=-(-args.n // k), mean=not args.draw)
    else:
        save_samples(model, shape, out, n=args.n, mean=not args.draw)
    print(f"wrote {args.n} samples to {out}")
    return 0
