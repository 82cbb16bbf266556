"""The likelihood table on static binarized MNIST: train and evaluate every row.

Each row is one ``pyro-vae train`` command and one ``pyro-vae evaluate`` command, run
here in order; the run folders (``OUT/<row>``, default ``results/runs``) keep the
checkpoints, so the script can be stopped at any time and run again: a finished
training is skipped, an unfinished one resumes (``--resume``), and an evaluation is
redone only when no ``eval_valid.json`` of the run at its current epoch, with the same K
and number of images, exists.

Rows (784-400-50 MLP, softplus, Bernoulli pixels, batch 256, Adam from 1e-3 on a
cosine schedule to 1e-5, KL warm-up where the objective is an ELBO, EMA of the weights
with decay 0.999, the best validation epoch's weights evaluated):

- ``vae-recipe``: the ELBO, diagonal Gaussian guide;
- ``iwae5``: the IWAE bound L_5;
- ``iwae5-flow``: L_5 with a normalizing-flow guide;
- ``vae-vamp``: the ELBO, diagonal guide, the VampPrior of 500 pseudo-inputs;
- ``iwae5-flow-vamp``: L_5, the flow guide and the VampPrior;
- ``hvae-vamp``: the two-stochastic-layer VAE (z1, z2 of 40 each, gated 300-300 networks), the
  ELBO, diagonal guides, the VampPrior of 500 pseudo-inputs on z2;
- ``hvae-p200``: the same model with the VampPrior paper's training (Adam 5e-4 on a cosine
  schedule to 1e-5, batch 100, KL warm-up over 50 epochs), 200 epochs.
- ``hvae-flow``: hvae-p200 with a flow guide in both layers, 130 epochs of the same 200-epoch
  cosine schedule.
- ``hvae-flow-wd``: hvae-flow with AdamW's decoupled weight decay λ = 0.1.

The table (NLL = −log p̂(x) with K importance samples ± its standard error over the
images, −ELBO, −L_5, −L_50, active units, epochs, training hours) is printed as
Markdown, and written to ``--table`` if given::

    python examples/likelihood_table.py --data ../shared/data --rows vae-recipe --threads 1
    python examples/likelihood_table.py --dataset digits --epochs 2 --eval-samples 50 \\
        --out /tmp/table     # a smoke run, seconds
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from pyro_vae.cli import main as pyro_vae
from pyro_vae.runs import CHECKPOINT, RUN_JSON

RECIPE = ["--batch-size", "256", "--fused", "--lr-schedule", "cosine", "--lr-final", "1e-5", "--ema", "0.999"]
VAMP = ["--prior", "vamp", "--pseudo-inputs", "500"]
HVAE_P200 = [
    "--model",
    "hvae",
    "--network",
    "gated",
    "--hidden",
    "300",
    "300",
    "--z-dim",
    "40",
    "--prior",
    "vamp",
    "--objective",
    "elbo",
    "--lr",
    "5e-4",
    "--batch-size",
    "100",
    "--lr-schedule",
    "cosine",
    "--lr-final",
    "1e-5",
    "--kl-warmup",
    "50",
    "--ema",
    "0.999",
    "--fused",
]
ROWS = {
    "vae-recipe": dict(epochs=800, args=["--objective", "elbo", "--kl-warmup", "10"] + RECIPE),
    "iwae5": dict(epochs=300, args=["--objective", "iwae", "--particles", "5"] + RECIPE),
    "iwae5-flow": dict(epochs=300, args=["--objective", "iwae", "--particles", "5", "--guide", "flow"] + RECIPE),
    "vae-vamp": dict(epochs=500, args=["--objective", "elbo", "--kl-warmup", "10"] + VAMP + RECIPE),
    "iwae5-flow-vamp": dict(
        epochs=200, args=["--objective", "iwae", "--particles", "5", "--guide", "flow"] + VAMP + RECIPE
    ),
    "hvae-vamp": dict(
        epochs=300,
        args=["--model", "hvae", "--network", "gated", "--prior", "vamp", "--objective", "elbo", "--kl-warmup", "10"]
        + RECIPE,
    ),
    "hvae-p200": dict(epochs=200, args=HVAE_P200),
    "hvae-flow": dict(epochs=130, args=HVAE_P200 + ["--guide", "flow", "--schedule-epochs", "200"]),
    "hvae-flow-wd": dict(
        epochs=130,
        args=HVAE_P200
        + ["--guide", "flow", "--schedule-epochs", "200", "--optimizer", "adamw", "--weight-decay", "0.1"],
    ),
}


def train_command(name, row, opts):
    """The ``pyro-vae train`` arguments of a row: a new run, or a resume of its folder."""
    out = Path(opts.out) / name
    epochs = str(opts.epochs or row["epochs"])
    if (out / CHECKPOINT).is_file():
        done = json.loads((out / RUN_JSON).read_text()).get("epoch", 0)
        if done >= int(epochs):
            return None
        return ["train", "--resume", str(out), "--epochs", epochs, "--no-progress"]
    data = ["--dataset", opts.dataset] + (["--data", opts.data] if opts.data else [])
    if opts.dataset == "digits":  # the smoke run: the small data set's own network
        data += ["--binarize", "static"]
    return [
        "train",
        *data,
        "--epochs",
        epochs,
        "--seed",
        str(opts.seed),
        "--out",
        str(out),
        "--no-progress",
        *row["args"],
    ]


def evaluation(name, opts):
    """The row's ``eval_valid.json``, made by ``pyro-vae evaluate`` unless one of the run as
    it stands (same epoch) with the same K and number of images exists."""
    out = Path(opts.out) / name
    path = out / "eval_valid.json"
    epoch = json.loads((out / RUN_JSON).read_text())["epoch"]
    key = dict(num_samples=opts.eval_samples, limit=opts.eval_limit, epoch=epoch)
    if path.is_file():
        result = json.loads(path.read_text())
        if all(result.get(k) == v for k, v in key.items()):
            return result
    ks = [str(k) for k in (5, 50) if opts.eval_samples % k == 0]
    cmd = ["evaluate", str(out), "-K", str(opts.eval_samples), "--seed", str(opts.seed), "--no-progress"]
    cmd += (["--iwae-k", *ks] if ks else []) + (["--data", opts.data] if opts.data else [])
    cmd += ["--limit", str(opts.eval_limit)] if opts.eval_limit else []
    cmd += ["--traced"] if opts.traced else []
    print("pyro-vae " + " ".join(cmd), flush=True)
    if pyro_vae(cmd) != 0:
        sys.exit(f"pyro-vae evaluate {out} failed")
    result = json.loads(path.read_text())
    result.update(key)
    path.write_text(json.dumps(result, indent=1))
    return result


def table(rows, opts):
    """The Markdown table of the evaluated rows."""
    lines = [
        "| row | NLL | −ELBO | −L_5 | −L_50 | active units | epochs (best) | training hours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in rows:
        run = json.loads((Path(opts.out) / name / RUN_JSON).read_text())
        iw = result.get("neg_iwae", {})
        hours = sum(run["history"]["epoch_seconds"]) / 3600
        best = run.get("best", {}).get("epoch", "–")
        lines.append(
            f"| {name} | {result['nll']:.2f} ± {result['nll_stderr']:.2f} | {result['neg_elbo']:.2f} | "
            + " | ".join(f"{iw[k]:.2f}" if k in iw else "–" for k in ("5", "50"))
            + f" | {result['active_units']} of {result['latent_units']} | {run['epoch']} ({best}) | "
            f"{hours:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to train and evaluate")
    p.add_argument("--dataset", default="binarized-mnist", choices=["binarized-mnist", "digits"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    p.add_argument("--out", default="results/runs", help="folder of the rows' run folders")
    p.add_argument("--epochs", type=int, default=None, help="train every row this many epochs (default: the row's)")
    p.add_argument("--eval-samples", type=int, default=5000, help="K, importance samples per image")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate the first N validation images (default: all)")
    p.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    p.add_argument(
        "--traced",
        action="store_true",
        help="evaluate with pyro-vae evaluate --traced: the same estimates from a compiled graph",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", default=None, help="write the Markdown table to this file")
    opts = p.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    results = []
    for name in opts.rows:
        cmd = train_command(name, ROWS[name], opts)
        if cmd is not None:
            print("pyro-vae " + " ".join(cmd), flush=True)
            if pyro_vae(cmd) != 0:
                sys.exit(f"pyro-vae train for row {name} failed")
        if not opts.train_only:
            results.append((name, evaluation(name, opts)))
    if results:
        text = table(results, opts)
        print(text)
        if opts.table:
            Path(opts.table).write_text(text + "\n")


if __name__ == "__main__":
    main()
