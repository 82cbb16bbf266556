"""One model trained on 1 process and data-parallel on W processes (torchrun, gloo on
CPUs): loss curves and seconds per epoch.

Both runs are ``pyro-vae train`` with the same options (same seed, so the same initial
weights and the same global batches); they differ only in the Monte Carlo draws of z,
which each rank takes from its own generator. Each process uses one thread.

    python benchmarks/ddp_vs_single.py --data ../shared/data --epochs 5 --out runs/ddp_vs_single
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def train(cmd, out, args):
    if args.plot_only:  # the runs are there already: read them
        return json.loads((out / "run.json").read_text())["history"]
    opts = [
        "train",
        "--dataset",
        args.dataset,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        "0",
        "--no-progress",
        "--out",
        str(out),
        "--overwrite",
    ]
    if args.data:
        opts += ["--data", args.data]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd + opts, env=env, check=True)
    return json.loads((out / "run.json").read_text())["history"]


def main(args):
    out = Path(args.out)
    runs = {"1 process": train([sys.executable, "-m", "pyro_vae.cli"], out / "single", args)}
    runs[f"{args.nproc} processes (torchrun)"] = train(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.nproc),
            "-m",
            "pyro_vae.cli",
        ],
        out / f"ddp{args.nproc}",
        args,
    )

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for (name, h), color in zip(runs.items(), ("C0", "C3")):
        epochs = range(1, len(h["train_loss"]) + 1)
        ax.plot(epochs, h["train_loss"], color=color, ls="--", marker="o", ms=3, label=f"{name}: train")
        ax.plot(epochs, h["valid_loss"], color=color, marker="s", ms=3, label=f"{name}: validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("−ELBO (nats per image)")
    ax.set_title(f"{args.dataset}, global batch {args.batch_size}", fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, handlelength=3.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure)
    print(f"wrote {args.figure}")

    print(f"| epoch | {' | '.join(f'{n}: train / valid −ELBO' for n in runs)} |")
    print("|---|" + "---|" * len(runs))
    for e in range(args.epochs):
        cells = [f"{h['train_loss'][e]:.2f} / {h['valid_loss'][e]:.2f}" for h in runs.values()]
        print(f"| {e + 1} | {' | '.join(cells)} |")
    for name, h in runs.items():
        secs = sorted(h["epoch_seconds"])
        print(f"{name}: median {secs[len(secs) // 2]:.1f} s per epoch (wall clock)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="binarized-mnist")
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="runs/ddp_vs_single")
    p.add_argument("--figure", default="docs/figures/ddp_vs_single.png")
    p.add_argument("--plot-only", action="store_true", help="redraw from the run folders in --out")
    main(p.parse_args())
