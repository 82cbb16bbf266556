"""The ``pyro-vae`` command line.

    pyro-vae train                       # digits, offline, about a minute on a CPU
    pyro-vae train --dataset binarized-mnist --data ../shared/data --epochs 10 --out runs/bmnist
    pyro-vae sample runs/bmnist -n 64

``train`` writes into its output folder ``checkpoint.pt`` (tensors only), ``run.json``
(configuration and history) and PNG figures (loss curves, reconstructions, samples).
"""

import argparse
import math
import sys
from pathlib import Path

import torch

from . import checkpoints
from .data import DATASETS, DataError, load_dataset
from .models import build_model
from .objectives import OBJECTIVES, ALIASES
from .plots import plot_losses, save_reconstructions, save_samples
from .training import NonFiniteLossError, Trainer


class UsageError(ValueError):
    """An invalid command-line option."""


# ---- run folders -------------------------------------------------------------------
def load_run(run_dir, device="cpu"):
    """Rebuild the model of a run folder and load its weights.

    :returns: ``(model, run)`` where ``run`` is the parsed ``run.json``.
    """
    run_dir = Path(run_dir)
    run = checkpoints.load_json(run_dir / checkpoints.RUN_JSON)
    model = build_model(run["model"])
    state = checkpoints.load_checkpoint(run_dir / checkpoints.CHECKPOINT, map_location="cpu")
    checkpoints.load_state_dict(model, state["model"], what=f"{run['model'].get('model', 'vae')} of {run_dir}")
    model.num_data = run.get("num_data")
    return model.to(device).eval(), run


def _check_out_dir(out, overwrite):
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if (out / checkpoints.RUN_JSON).exists() or (out / checkpoints.CHECKPOINT).exists():
            if not overwrite:
                raise UsageError(f"{out} already holds a run; pass --overwrite to replace it, "
                                 "or choose another --out")
        elif not overwrite:
            raise UsageError(f"{out} is not empty and holds no run; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- train -------------------------------------------------------------------------
def add_train_arguments(p):
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default: digits, offline)")
    d.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    d.add_argument("--download", action="store_true", help="download missing data files (needs network)")
    d.add_argument("--binarize", default=None, choices=["static", "dynamic", "none"],
                   help="binarize grey levels for a Bernoulli likelihood")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vae", help="model kind (default: vae)")
    m.add_argument("--likelihood", default="auto", choices=["auto", "bernoulli", "gaussian"],
                   help="p(x|z); auto: bernoulli for binary data, gaussian otherwise")
    m.add_argument("--scale", type=float, default=None, help="fixed Gaussian scale (default: learned per pixel)")
    m.add_argument("--network", default="mlp", choices=["mlp", "conv"])
    m.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden layer sizes of the MLP (default: 400, or 128 for 8×8 digits)")
    m.add_argument("--z-dim", type=int, default=None, help="latent dimension (default: 50, or 8 for digits)")
    m.add_argument("--guide", default="diagonal", help="guide family (default: diagonal)")
    o = p.add_argument_group("optimization")
    o.add_argument("--objective", default="elbo", help=f"objective: {', '.join(sorted(OBJECTIVES))}")
    o.add_argument("--particles", type=int, default=1, help="L, particles per data point")
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="cpu", help="cpu or cuda")
    o.add_argument("--clip-norm", type=float, default=None, help="clip the gradient norm to this value")
    r = p.add_argument_group("output")
    r.add_argument("--out", default=None, help="run folder (default: runs/<dataset>)")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def _validate_train_args(args):
    for name in ("epochs", "batch_size", "particles"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.z_dim is not None and args.z_dim < 1:
        raise UsageError(f"--z-dim must be a positive integer, got {args.z_dim}")
    key = ALIASES.get(args.objective, args.objective)
    if key not in OBJECTIVES:
        raise UsageError(f"unknown --objective {args.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available")


def model_config(args, image_shape, binary):
    """The model settings ``run.json`` stores, from the command line and the data."""
    small = image_shape[-1] <= 8
    likelihood = args.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if binary else "gaussian"
    return dict(model=args.model, image_shape=list(image_shape), z_dim=args.z_dim or (8 if small else 50),
                network=args.network, hidden_dims=args.hidden or ([128] if small else [400]),
                likelihood=likelihood, guide=args.guide, scale=args.scale)


def cmd_train(args):
    _validate_train_args(args)
    out = _check_out_dir(args.out or Path("runs") / args.dataset, args.overwrite)
    train = load_dataset(args.dataset, "train", args.data, binarize=args.binarize, seed=args.seed,
                         download=args.download)
    valid = load_dataset(args.dataset, "valid", args.data, binarize=args.binarize, seed=args.seed,
                         download=args.download)
    binary = args.dataset == "binarized-mnist" or args.binarize in ("static", "dynamic")
    config = model_config(args, train.image_shape, binary)
    model = build_model(config)
    trainer = Trainer(model, train, valid, objective=args.objective, num_particles=args.particles, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, device=args.device, clip_norm=args.clip_norm)
    run = dict(model=config, data=dict(dataset=args.dataset, binarize=args.binarize, seed=args.seed),
               train=dict(objective=args.objective, particles=args.particles, lr=args.lr,
                          batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, device=args.device,
                          clip_norm=args.clip_norm),
               num_data=len(train))

    def save(trainer):
        state = {"model": trainer.vae.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                 "epoch": trainer.epoch, "step": trainer.step_count}
        checkpoints.save_checkpoint(out / checkpoints.CHECKPOINT, state)
        checkpoints.save_json(out / checkpoints.RUN_JSON, dict(run, history=trainer.history.to_dict(),
                                                                 epoch=trainer.epoch))

    print(f"training a {config['model']} ({config['network']}, z_dim={config['z_dim']}, "
          f"{config['likelihood']} likelihood, {config['guide']} guide) on {args.dataset} "
          f"({len(train)} train / {len(valid)} valid) with {args.objective}, writing {out}")
    history = trainer.run(args.epochs, progress=not args.no_progress, callback=save)
    model.eval()
    write_figures(model, history.to_dict(), valid, out)
    print(f"epoch {trainer.epoch}: train -ELBO {history.train_loss[-1]:.3f}, "
          f"valid -ELBO {history.valid_loss[-1]:.3f} nats per data point; wrote {out}")
    return 0


def write_figures(model, history, valid, out):
    out = Path(out)
    shape = valid.image_shape
    x = valid.x[:32].to(next(model.parameters()).device)
    plot_losses(history, out / "loss_curves.png")
    save_reconstructions(model, x, shape, out / "reconstructions.png")
    save_samples(model, shape, out / "samples.png")


# ---- sample ------------------------------------------------------------------------
def cmd_sample(args):
    if args.n < 1:
        raise UsageError(f"-n must be a positive integer, got {args.n}")
    model, run = load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    shape = tuple(run["model"]["image_shape"])
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    save_samples(model, shape, out, n=args.n, mean=not args.draw)
    print(f"wrote {args.n} samples to {out}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders the Pyro way.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model; writes a run folder")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="write samples of a trained run as a PNG grid")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/samples.png)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, DataError, checkpoints.CheckpointError, NonFiniteLossError, ValueError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
