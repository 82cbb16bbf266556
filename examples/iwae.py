"""Importance weighted autoencoders against the VAE on static binarized MNIST.

Burda, Grosse & Salakhutdinov (2015) train the same model and guide with the ELBO
(K = 1) and with the K-sample importance weighted bound

    L_K(x) = E[log (1/K) Σ_k p(x, z_k) / q(z_k | x)],   z_1..z_K ~ q(z | x),

which tightens towards log p(x) as K grows. This script trains the 784-400-50 MLP VAE
(softplus hidden layers, 50 Gaussian latent units, Bernoulli pixels, diagonal Gaussian
guide) with K = 1, 5 and 50 (``objective="iwae"``, K = ``num_particles``), keeps for
each the epoch with the best validation bound, and reports on validation images
−ELBO, −L_5, −L_50, the NLL −log p̂(x) with 5000 importance samples
(:func:`pyro_vae.eval.likelihood_report`), and the active units.

    python examples/iwae.py --data ../shared/data --epochs 12 --eval-limit 1000 --threads 1
    python examples/iwae.py --data ../shared/data --epochs 1 --train-limit 5000 \\
        --eval-limit 100 --eval-samples 500          # a smoke run, about a minute

Each model is saved as a run folder (``OUT/k1``, ``OUT/k5``, ...), so that
``pyro-vae evaluate OUT/k5 -K 5000`` evaluates it again; the numbers go to
``OUT/results.json`` and a figure to ``OUT/iwae_bounds.png``.
"""

import argparse
import copy
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vae import build_vae, load_dataset  # noqa: E402
from pyro_vae.eval import likelihood_report  # noqa: E402
from pyro_vae.runs import save_checkpoint, save_json  # noqa: E402
from pyro_vae.train.trainer import Trainer  # noqa: E402


def train_one(k, train, valid, args, epochs):
    """Train the VAE with the K-sample bound (the ELBO for K = 1); keep the epoch whose
    validation bound −L_K is best. Returns the model, its history and the times."""
    torch.manual_seed(args.seed)
    vae = build_vae((1, 28, 28), z_dim=50, hidden_dims=tuple(args.hidden))
    objective = "elbo" if k == 1 else "iwae"
    trainer = Trainer(
        vae, train, valid, objective=objective, particles=k, lr=args.lr, batch_size=args.batch_size, seed=args.seed
    )
    best = {"loss": float("inf")}

    def keep_best(trainer):
        if trainer.history.valid_loss[-1] < best["loss"]:
            best.update(
                loss=trainer.history.valid_loss[-1], epoch=trainer.epoch, state=copy.deepcopy(trainer.vae.state_dict())
            )

    wall, cpu = time.perf_counter(), time.process_time()
    history = trainer.run(epochs, progress=not args.no_progress, callback=keep_best)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    vae.load_state_dict(best["state"])
    vae.eval()
    return vae, history.to_dict(), best["epoch"], wall, cpu


def save_run(vae, k, history, epoch, train, args, epochs, out):
    """A run folder that ``pyro-vae evaluate`` reads (``run.json`` and ``checkpoint.pt``)."""
    save_checkpoint(out / "checkpoint.pt", {"model": vae.state_dict(), "epoch": epoch})
    save_json(
        out / "run.json",
        dict(
            model=vae.config,
            data=dict(dataset="binarized-mnist", binarize=None, seed=args.seed),
            train=dict(
                objective="elbo" if k == 1 else "iwae",
                particles=k,
                lr=args.lr,
                batch_size=args.batch_size,
                epochs=epochs,
                seed=args.seed,
                device="cpu",
                clip_norm=None,
            ),
            num_data=len(train),
            history=history,
            epoch=epoch,
        ),
    )


def plot(results, path):
    """Left: validation −L_K (each model's own training bound) per epoch. Right: each
    trained model's −L_K for K = 1, 5, 50 and 5000 (NLL), on the same images."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for r in results:
        k = r["train_k"]
        label = "VAE (ELBO, K=1)" if k == 1 else f"IWAE, K={k}"
        epochs = range(1, len(r["history"]["valid_loss"]) + 1)
        ax1.plot(epochs, r["history"]["valid_loss"], marker="o" if len(epochs) <= 30 else None, label=label)
        rep = r["report"]
        ks = [1] + [int(j) for j in rep["neg_iwae"]] + [rep["num_samples"]]
        ys = [rep["neg_elbo"]] + list(rep["neg_iwae"].values()) + [rep["nll"]]
        ax2.plot(ks, ys, marker="o", label=label)
    ax1.set(
        xlabel="epoch",
        ylabel="validation −L_K of the training objective (nats)",
        title="training: each model's own bound",
    )
    big = results[0]["report"]["num_samples"]
    ax1.xaxis.get_major_locator().set_params(integer=True)
    curves = [r["history"]["valid_loss"] for r in results]
    if all(len(c) > 5 for c in curves):  # long runs: the first epochs would squash the rest of the curves
        late = [v for c in curves for v in c[2:]]
        margin = 0.05 * (max(late) - min(late)) + 0.5
        ax1.set_ylim(min(late) - margin, max(late) + margin)
    ax2.set(
        xscale="log",
        xlabel="K used to evaluate the bound",
        ylabel=f"−L_K (nats); K={big}: NLL",
        title="evaluation on the same validation images",
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 50], help="K of the models to train (1: the VAE)")
    p.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=[12],
        help="epochs: one number for every K, or one per K (the K=50 bound costs ~50× an ELBO step)",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[400], help="hidden layer sizes of the MLPs")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--eval-limit", type=int, default=1000, help="validation images used to select and report")
    p.add_argument("--eval-samples", type=int, default=5000, help="importance samples for the NLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="runs/iwae", help="folder for run folders, results.json and the figure")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the models of OUT/results.json trained with the same settings; train the others",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("batch_size", "eval_limit", "eval_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if any(k < 1 for k in args.k) or len(set(args.k)) != len(args.k):
        p.error(f"--k: positive integers, each K once, got {args.k}")
    if any(e < 1 for e in args.epochs) or len(args.epochs) not in (1, len(args.k)):
        p.error(f"--epochs: one positive number, or one for each of the {len(args.k)} K, got {args.epochs}")
    epochs_of = dict(zip(args.k, args.epochs * len(args.k) if len(args.epochs) == 1 else args.epochs))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)

    train = load_dataset("binarized-mnist", "train", root=args.data)
    valid = load_dataset("binarized-mnist", "valid", root=args.data)
    if args.train_limit:
        train.x = train.x[: args.train_limit]
    valid.x = valid.x[: args.eval_limit]
    bound_ks = [k for k in (5, 50) if args.eval_samples % k == 0]
    done = {}
    if args.reuse and (out / "results.json").is_file():
        done = {
            r["train_k"]: r
            for r in json.loads((out / "results.json").read_text())
            if r["epochs"] == epochs_of.get(r["train_k"])
            and r["report"]["n"] == len(valid)
            and r["report"]["num_samples"] == args.eval_samples
            and (out / f"k{r['train_k']}").is_dir()
        }
    results = []
    for k in args.k:
        if k in done:
            results.append(done[k])
            print(f"K={k}: reusing {out / f'k{k}'} (NLL {done[k]['report']['nll']:.2f})", flush=True)
            continue
        vae, history, epoch, wall, cpu = train_one(k, train, valid, args, epochs_of[k])
        save_run(vae, k, history, epoch, train, args, epochs_of[k], out / f"k{k}")
        pyro.set_rng_seed(args.seed)
        report = likelihood_report(
            vae, valid.x, num_samples=args.eval_samples, ks=bound_ks, progress=not args.no_progress
        )
        results.append(
            dict(
                train_k=k,
                epochs=epochs_of[k],
                best_epoch=epoch,
                train_wall_s=wall,
                train_cpu_s=cpu,
                history=history,
                report=report,
            )
        )
        print(
            f"K={k}: trained {epochs_of[k]} epochs in {wall:.0f} s ({cpu:.0f} CPU-s), best epoch {epoch}; "
            f"NLL {report['nll']:.2f} ± {report['nll_stderr']:.2f} (evaluated in {report['seconds']:.0f} s)",
            flush=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(
        f"\nbinarized MNIST, {len(train)} training images, 784-{'-'.join(map(str, args.hidden))}-50 MLP, "
        f"batch {args.batch_size}, Adam lr {args.lr}; {len(valid)} validation images, "
        f"NLL with K={args.eval_samples}; nats, ± standard error over the images"
    )
    head = "".join(f"{'-L_' + str(j):>10s}" for j in bound_ks)
    print(f"{'model':>16s} {'epochs':>6s} {'train s':>8s} {'-ELBO':>10s}{head} {'NLL':>16s} {'AU':>4s}")
    for r in results:
        rep = r["report"]
        name = "VAE" if r["train_k"] == 1 else f"IWAE K={r['train_k']}"
        bounds = "".join(f"{rep['neg_iwae'][str(j)]:10.2f}" for j in bound_ks)
        print(
            f"{name:>16s} {r['best_epoch']:>6d} {r['train_wall_s']:8.0f} {rep['neg_elbo']:10.2f}{bounds} "
            f"{rep['nll']:9.2f} ± {rep['nll_stderr']:4.2f} {rep['active_units']:>4d}"
        )
    plot(results, out / "iwae_bounds.png")
    print(f"wrote {out / 'results.json'} and {out / 'iwae_bounds.png'}")
    return results


if __name__ == "__main__":
    main()
