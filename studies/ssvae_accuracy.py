r"""Semi-supervised VAE runs against the same classifier trained on their labels alone.

For each run folder of ``pyro-vae train --model ssvae --labels N`` (on mnist10k):

- the held-out accuracy of argmax_y q(y|x) on the 2,000 ``valid`` images (never trained on);
- the baseline: the run's classifier network (:class:`~pyro_vae.models.ssvae.Classifier`,
  freshly initialized) trained by cross-entropy −(1/N) Σ log q(y_n|x_n) on the run's N
  labelled points alone (the same balanced choice, the same dynamic binarization), its
  held-out accuracy; for an M1+M2 run (``--model m1m2``) also the same network on M1's features
  f(x) of the labelled images alone (M1 has seen the unlabelled images, the network only the labels);
- requested-digit samples: ``n`` draws x = E[x|z, y=k], z ~ N(0, I), per class k, and the
  fraction that the package's held-out classifier (:func:`~pyro_vae.eval.train_classifier`,
  trained on the 8,000 mnist10k training images) assigns to k.

Writes ``OUT/PREFIX_accuracy.json``, ``OUT/PREFIX_samples.png`` (one row per class of the
last run) and ``OUT/PREFIX_accuracy.png`` (``--prefix``, default ``ssvae``; accuracy against N). Seeded: ``--seed``.

    python studies/ssvae_accuracy.py results/runs/ssvae-100 results/runs/ssvae-1000 --out docs/figures
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vae.data import load_dataset  # noqa: E402
from pyro_vae.data.semisupervised import choose_labelled  # noqa: E402
from pyro_vae.eval.classifier import classifier_probs, train_classifier  # noqa: E402
from pyro_vae.models.ssvae import Classifier  # noqa: E402
from pyro_vae.plots import save_class_samples  # noqa: E402
from pyro_vae.runs import load_run  # noqa: E402


def baseline_accuracy(train, valid, labelled, hidden_dims, steps, seed, batch_size=100, lr=1e-3, inputs=None):
    """The classifier network trained on ``train[labelled]`` alone: Adam on the cross-entropy,
    each step a batch of min(B, N) labelled images, dynamically binarized; returns the
    accuracy on ``valid``.

    :param inputs: the map from images to the network's input (M1+M2: M1's features f(x)), or
        None for the pixels."""
    inputs = inputs or (lambda x: x)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier(inputs(train.x[:1]).shape[-1], 10, hidden_dims)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    x, y = train.x[labelled], train.y[labelled]
    b = min(batch_size, len(x))
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:b]
        xb = (torch.rand(x[idx].shape, generator=g) < x[idx]).float()
        loss = torch.nn.functional.cross_entropy(clf(inputs(xb)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (clf(inputs(valid.x)).argmax(-1) == valid.y).double().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of pyro-vae train --model ssvae (or m1m2)")
    p.add_argument("--prefix", default="ssvae", help="the names of the files written: PREFIX_accuracy.json, ...")
    p.add_argument("--data", default=None, help="data folder (default $PYRO_VAE_DATA)")
    p.add_argument("--out", default="docs/figures", help="folder for the JSON and the figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-steps", type=int, default=3000, help="Adam steps of the labels-only baseline")
    p.add_argument("--judge-epochs", type=int, default=10, help="epochs of the held-out judge classifier")
    p.add_argument("--samples-per-class", type=int, default=100)
    args = p.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grey = load_dataset("mnist10k", "train", args.data)
    judge = train_classifier(grey, epochs=args.judge_epochs, seed=args.seed)
    rows = []
    for run_dir in args.runs:
        model, run = load_run(run_dir)
        opts = run["data"]  # the data set's settings: binarization, seed, the labels kept
        train = load_dataset("mnist10k", "train", args.data)
        valid = load_dataset("mnist10k", "valid", args.data, binarize=opts["binarize"], seed=opts["seed"])
        with torch.no_grad():
            acc = (model.classify(valid.x) == valid.y).double().mean().item()
        labelled = choose_labelled(train.y, opts["labels"], 10, opts["label_seed"])
        base = baseline_accuracy(train, valid, labelled, run["model"]["hidden_dims"], args.baseline_steps, args.seed)
        pyro.set_rng_seed(args.seed)
        c = torch.arange(10).repeat_interleave(args.samples_per_class)
        with torch.no_grad():
            samples = model.sample(c=c)
        recognized = (classifier_probs(judge, samples).argmax(-1) == c).double().mean().item()
        features = None
        if run["model"]["model"] == "m1m2":  # the same network on M1's features of the labelled images alone
            features = baseline_accuracy(
                train,
                valid,
                labelled,
                run["model"]["hidden_dims"],
                args.baseline_steps,
                args.seed,
                inputs=model.features,
            )
        row = dict(
            run=str(run_dir),
            labels=opts["labels"],
            epochs=run.get("epoch"),
            ssvae_accuracy=acc,
            labels_only_accuracy=base,
            **({"labels_only_m1_features_accuracy": features} if features is not None else {}),
            samples_recognized=recognized,
            judge_valid_accuracy=(classifier_probs(judge, valid.x).argmax(-1) == valid.y).double().mean().item(),
        )
        print(json.dumps(row))
        rows.append(row)
        last = model
    save_class_samples(last, (1, 28, 28), out / f"{args.prefix}_samples.png")
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ns = [r["labels"] for r in rows]
    m1m2 = "labels_only_m1_features_accuracy" in rows[-1]
    ax.plot(ns, [100 * r["ssvae_accuracy"] for r in rows], "o-", label="M1+M2" if m1m2 else "semi-supervised VAE (M2)")
    if m1m2:
        ax.plot(
            ns,
            [100 * r["labels_only_m1_features_accuracy"] for r in rows],
            "^--",
            label="M2's classifier on M1 features, labels alone",
        )
    ax.plot(ns, [100 * r["labels_only_accuracy"] for r in rows], "s--", label="same classifier on pixels, labels alone")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training points N")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("mnist10k, 2,000 held-out images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{args.prefix}_accuracy.png")
    (out / f"{args.prefix}_accuracy.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
