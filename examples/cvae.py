"""A conditional VAE: once trained, ask it for a "2" (Sohn, Lee & Yan 2015).

The condition c is an observed input of both the model and the guide,

    model:  z ~ p(z|c),  x ~ p(x|z, c)        guide:  z ~ q(z|x, c),

trained on the conditional ELBO E_q[log p(x|z,c)] − KL(q(z|x,c) ‖ p(z|c)) with the same
plate, likelihood, guide family and SVI trainer as the VAE. Two kinds of c:

- ``--task class``: c is the digit's label. The script draws each class, asks an
  independent CNN classifier (trained on real images) which digit it sees, and compares
  the importance-sampled log p(x|c) on held-out images with log p(x) of an unconditional
  VAE with the same networks.
- ``--task quadrant``: c is one, two or three quadrants of an MNIST image and x is the
  rest (Pyro's CVAE tutorial); the script reports −log p(x|c) by number of given
  quadrants and draws completions.

    python examples/cvae.py --dataset digits --epochs 30                  # offline, ~1 min
    python examples/cvae.py --data ../shared/data                         # mnist10k (8,000 / 2,000)
    python examples/cvae.py --data ../shared/data --task quadrant
"""

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import build_vae, evaluate_loss, fit, load_dataset
from pyro_vae.data import with_quadrant_masks
from pyro_vae.eval import classifier_accuracy, log_likelihood, train_classifier
from pyro_vae.eval.common import MeanStderr
from pyro_vae.models import build_cvae, build_cvae_quadrant
from pyro_vae.plots import save_class_samples, save_completions


def load(args):
    train = load_dataset(args.dataset, "train", args.data, binarize="dynamic")  # x ~ Bernoulli(grey) per batch
    valid = load_dataset(args.dataset, "valid", args.data, binarize="dynamic")  # one fixed (static) draw
    return train, valid


def class_task(args, out):
    train, valid = load(args)
    shape, hidden = train.image_shape, (args.hidden,)
    train_kw = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, progress=False)

    # 1. the conditional VAE and, for comparison, a VAE with the same networks minus c
    torch.manual_seed(args.seed)  # each model's initial weights follow --seed
    cvae = build_cvae(shape, z_dim=args.z_dim, hidden_dims=hidden, prior=args.prior or "fixed")
    fit(cvae, train, valid, with_labels=True, **train_kw)
    torch.manual_seed(args.seed)
    vae = build_vae(shape, z_dim=args.z_dim, hidden_dims=hidden)
    fit(vae, train, valid, **train_kw)
    cvae.eval(), vae.eval()

    # 2. one row per class: z ~ p(z|c=k), E[x|z, c=k]
    path = save_class_samples(cvae, shape, out / f"cvae_class_samples_{args.dataset}.png", n=10)
    print(f"wrote {path}")

    # 3. does a generated image show the requested digit? An independent CNN decides.
    real_train = load_dataset(args.dataset, "train", args.data)
    real_valid = load_dataset(args.dataset, "valid", args.data)
    clf = train_classifier(real_train, epochs=args.clf_epochs, seed=args.seed)
    c = torch.arange(10).repeat_interleave(args.samples_per_class)
    pyro.set_rng_seed(args.seed)
    acc_gen = classifier_accuracy(clf, cvae.sample(c=c), c)
    acc_real = classifier_accuracy(clf, real_valid.x, real_valid.y)
    per_class = [
        classifier_accuracy(clf, cvae.sample(c=k, n=args.samples_per_class), torch.full((args.samples_per_class,), k))
        for k in range(10)
    ]

    # 4. log p(x|c) against log p(x), importance-sampled on held-out images
    n = min(args.ll_points, len(valid))
    x, y = valid.x[:n], valid.y[:n]
    ll_c = log_likelihood(cvae, x, y, num_samples=args.ll_samples)
    ll = log_likelihood(vae, x, num_samples=args.ll_samples)
    gain = ll_c - ll

    print(
        f"\n{args.dataset}: {len(train)} train / {len(valid)} held-out images, {args.epochs} epochs, "
        f"MLP {train.x_dim}(+10)-{args.hidden}-{args.z_dim}, prior {cvae.prior_kind}"
    )
    print(f"classifier accuracy on real held-out images:      {acc_real:.4f}")
    print(f"classifier accuracy on {len(c)} CVAE samples:      {acc_gen:.4f}  (requested class = predicted)")
    print("  per class: " + " ".join(f"{k}:{a:.2f}" for k, a in enumerate(per_class)))
    print(
        f"held-out -ELBO   CVAE {evaluate_loss(cvae, valid, with_labels=True):.2f}   "
        f"VAE {evaluate_loss(vae, valid):.2f} nats"
    )
    print(f"log p(x|c), CVAE (IS, K={args.ll_samples}, {n} images): %.2f ± %.2f nats" % MeanStderr(ll_c).floats())
    print(f"log p(x),   VAE  (IS, K={args.ll_samples}, {n} images): %.2f ± %.2f nats" % MeanStderr(ll).floats())
    print(
        "gain log p(x|c) − log p(x) (paired):               %.2f ± %.2f nats "
        "(log p(c|x) − log p(c) ≤ log 10 = 2.30 for an exact model)" % MeanStderr(gain).floats()
    )


def quadrant_task(args, out):
    train, valid = load(args)
    shape = train.image_shape
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    model = build_cvae_quadrant(
        shape, z_dim=args.z_dim, hidden_dims=(args.hidden, args.hidden), prior=args.prior or "learned"
    )
    # every training image once with 1, 2 and 3 given quadrants; batches are (x, mask)
    fit(
        model,
        model.prepare_data(train),
        model.prepare_data(valid),
        with_labels=True,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )
    model.eval()
    pyro.set_rng_seed(args.seed)
    path = save_completions(model, valid.x[:8], shape, out / f"cvae_quadrant_completions_{args.dataset}.png")
    print(f"wrote {path}")

    n = min(args.ll_points, len(valid))
    print(
        f"\n{args.dataset}: {len(train)} train / {len(valid)} held-out images, {args.epochs} epochs, "
        f"MLP hidden {args.hidden}-{args.hidden}, z_dim {args.z_dim}, prior {model.prior_kind}"
    )
    print(
        "given quadrants | -ELBO (10 particles, all held-out) | -log p(x|c) (IS, K=%d, %d images)"
        % (args.ll_samples, n)
    )
    for k in (1, 2, 3):
        data = with_quadrant_masks(valid, k)
        neg_elbo = evaluate_loss(model, data, num_particles=10, with_labels=True)
        nll = -log_likelihood(model, data.x[:n], data.y[:n], num_samples=args.ll_samples)
        print(f"{k:15d} | {neg_elbo:34.2f} | %.2f ± %.2f" % MeanStderr(nll).floats())


def main(args):
    torch.set_num_threads(args.threads)
    defaults = dict(epochs=30, lr=3e-3, z_dim=2) if args.task == "class" else dict(epochs=6, lr=2e-3, z_dim=20)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    out = Path(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    (class_task if args.task == "class" else quadrant_task)(args, out)
    print(
        f"\n{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU "
        f"({torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Train a conditional VAE; measure and draw it.")
    p.add_argument("--task", default="class", choices=["class", "quadrant"])
    p.add_argument("--dataset", default="mnist10k", choices=["mnist10k", "digits", "mnist", "fashion-mnist"])
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument(
        "--prior",
        default=None,
        choices=["fixed", "learned"],
        help="p(z|c) (default: fixed for class, learned for quadrant)",
    )
    p.add_argument("--epochs", type=int, default=None, help="default: 30 (class), 6 (quadrant)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 (class), 2e-3 (quadrant)")
    p.add_argument("--z-dim", type=int, default=None, help="default: 2 (class), 20 (quadrant)")
    p.add_argument("--hidden", type=int, default=400, help="hidden units (two layers for the quadrant task)")
    p.add_argument("--clf-epochs", type=int, default=8, help="epochs of the independent classifier")
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--ll-samples", type=int, default=500, help="K, importance samples per image")
    p.add_argument("--ll-points", type=int, default=2000, help="held-out images for log p(x|c)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 suits small MLPs)")
    p.add_argument("--out", default="runs/example-cvae")
    main(p.parse_args())
