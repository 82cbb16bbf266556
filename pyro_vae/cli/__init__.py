"""The ``pyro-vae`` command line: one module per subcommand, each with ``add_arguments(parser)``
and ``run(args)``.

    pyro-vae train                       # digits, offline, about a minute on a CPU
    pyro-vae train --dataset binarized-mnist --data ../shared/data --epochs 10 --out runs/bmnist
    pyro-vae sample runs/bmnist -n 64
    pyro-vae evaluate runs/bmnist --split valid -K 5000   # NLL, -ELBO, -L_K, active units
    pyro-vae plot runs/ae runs/vae --out runs/compare     # latent maps, manifolds, dead zones

``train`` writes into its output folder ``checkpoint.pt`` (tensors only), ``run.json``
(configuration and history) and PNG figures (loss curves, reconstructions, samples).
"""

import sys

from ..data import DataError
from ..runs import CheckpointError
from ..train import NonFiniteLossError, distributed
from . import evaluate, plot, posterior, sample, train
from .common import Parser, UsageError

#: The subcommands: (name, module, help).
COMMANDS = (
    ("train", train, "train a model; writes a run folder"),
    ("sample", sample, "write samples of a trained run as a PNG grid"),
    ("evaluate", evaluate, "NLL by importance sampling, -ELBO, IWAE bounds, active units (JSON)"),
    (
        "plot",
        plot,
        "latent maps, manifolds, samples, reconstructions, interpolations and dead-zone numbers of "
        "saved runs (PNG, JSON)",
    ),
    (
        "posterior",
        posterior,
        "NUTS on p(z|x) of a trained VAE against its guide for one data point: pair plot, Pareto k̂, divergences",
    ),
)


def build_parser():
    parser = Parser(prog="pyro-vae", description="Variational autoencoders the Pyro way.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, help in COMMANDS:
        p = sub.add_parser(name, help=help, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (train --resume)
    try:
        return args.func(args)
    except (UsageError, DataError, CheckpointError, NonFiniteLossError, ValueError, distributed.DistributedError) as e:
        # one write, newline included: the lines of several ranks (torchrun) do not merge
        sys.stderr.write(f"pyro-vae {args.command}: error: {e}\n")
        sys.stderr.flush()
        return 2


__all__ = ["main", "build_parser", "UsageError"]
