"""``pyro-vae gradvar``: score-function against reparameterized gradients (the toy of
Example 1.5 and the VAE contrast)."""


import torch

from .. import gradvar
from ..data import DATASETS, load_dataset
from ..models import build_model
from ..train import checkpoints
from .common import (UsageError, check_out_dir, int_at_least, nonnegative_int, positive_float,
                     positive_int)


def add_arguments(p):
    p.add_argument("--part", default="all", choices=["all", "toy", "vae"],
                   help="the toy of Example 1.5 (Figure 6), the VAE contrast, or both")
    p.add_argument("--out", default="runs/gradvar", help="output folder (tables, CSV, JSON, PNG)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--seed", type=int, default=0, help="seed of every random source")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("toy: f(x) = x², q(x) = N(φ, 1)")
    t.add_argument("--phis", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="values of φ")
    t.add_argument("--sizes", type=positive_int, nargs="+", default=list(gradvar.SAMPLE_SIZES), help="sample sizes N")
    t.add_argument("--repeats", type=int_at_least(4), default=300, help="repetitions R per (route, φ, N)")
    v = p.add_argument_group("VAE")
    v.add_argument("--dataset", default="binarized-mnist", choices=DATASETS, help="data set")
    v.add_argument("--data", default=None, help="data folder; if not given: $PYRO_VAE_DATA, else ./data")
    v.add_argument("--train-size", type=positive_int, default=10000, help="first N training images")
    v.add_argument("--valid-size", type=positive_int, default=1000, help="first N validation images")
    v.add_argument("--z-dim", type=positive_int, default=None, help="latent dimension; if not given: 50, or 8 for digits")
    v.add_argument("--hidden", type=positive_int, nargs="+", default=None, help="MLP hidden sizes; if not given: 400, or 128")
    v.add_argument("--steps", type=positive_int, default=1000, help="SVI steps of every −ELBO curve")
    v.add_argument("--batch-size", type=positive_int, default=100, help="data points per step")
    v.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    v.add_argument("--eval-every", type=positive_int, default=50, help="validation −ELBO every N steps")
    v.add_argument("--grad-repeats", type=int_at_least(2), default=200,
                   help="gradient estimates per route for the variance")
    v.add_argument("--settle-steps", type=nonnegative_int, default=200,
                   help="steps that settle a baseline before measuring")


def run(args):
    if args.train_size < args.batch_size:
        raise UsageError(f"--train-size {args.train_size} is smaller than --batch-size {args.batch_size}")
    out = check_out_dir(args.out, args.overwrite)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    progress = not args.no_progress
    if args.part in ("all", "toy"):
        rows = gradvar.measure_toy(args.phis, args.sizes, args.repeats, seed=args.seed, progress=progress)
        print(gradvar.toy_table(rows))
        gradvar.write_toy_outputs(rows, out)
        checkpoints.save_json(out / "toy_variance.json", dict(settings=settings, rows=rows))
    if args.part in ("all", "vae"):
        binarize = None if args.dataset == "binarized-mnist" else "static"
        train = load_dataset(args.dataset, "train", args.data, binarize=binarize, seed=args.seed)
        valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize, seed=args.seed)
        train.x, valid.x = train.x[:args.train_size], valid.x[:args.valid_size]
        small = train.image_shape[-1] <= 8
        torch.manual_seed(args.seed)
        vae = build_model(dict(model="vae", image_shape=list(train.image_shape),
                               z_dim=args.z_dim or (8 if small else 50),
                               hidden_dims=args.hidden or ([128] if small else [400])))
        x = valid.x[:args.batch_size]
        print(f"VAE on {args.dataset}: {len(train)} train / {len(valid)} valid images, {args.steps} steps per route, "
              f"gradient variance over {args.grad_repeats} estimates on a batch of {len(x)}")
        result = gradvar.vae_contrast(vae, train, valid, x, args.steps, args.batch_size, args.lr, args.eval_every,
                                      args.grad_repeats, args.settle_steps, seed=args.seed, progress=progress)
        print(gradvar.write_vae_outputs(result, out))
        checkpoints.save_json(out / "vae_gradient_variance.json", dict(settings=settings, **{
            k: v for k, v in result.items() if k != "curves"}))
    print(f"wrote {out}")
    return 0
