r"""M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, section 3.2) on mnist10k: the
semi-supervised VAE M2 trained on the features of an unsupervised VAE M1.

1. M1: a VAE (``build_vae``, Bernoulli likelihood, prior N(0, I)) trained on the 8,000 mnist10k
   training images, labels unused, dynamically binarized.
2. Features: the means μ_φ(x) of M1's guide q(z1|x), for the training and the held-out images,
   standardized by the training features' mean and standard deviation (``FeatureMap``, as in
   ``pyro-vae train --model m1m2``).
3. M2 (``build_model(model="ssvae", ...)``) on the features z1: y ~ Cat(π), z2 ~ N(0, I),
   z1 ~ N(f(y, z2), diag s²) with a learned per-feature scale s, y observed for the ``--labels``
   balanced training points (the same choice as ``pyro-vae train --labels N``), enumerated for
   the rest.

Prints and writes (``--out``, JSON) the held-out accuracy of argmax_y q(y|z1) on the 2,000
``valid`` images, with its binomial standard error, and the same classifier network trained
on the labelled features alone. Seeded: ``--seed`` seeds every source.

    python studies/m1_m2.py --data ../shared/data --labels 100 --out m1_m2.json
"""

import argparse
import json
import math
import time

import pyro
import torch

from pyro_vae import build_vae, fit
from pyro_vae.config import DataConfig, TrainConfig
from pyro_vae.data import ImageData
from pyro_vae.models import FeatureMap, build_model
from pyro_vae.runs.resume import for_model, load_splits, make_trainer


def accuracy(pred, y):
    """The fraction of ``pred == y`` and its binomial standard error."""
    a = (pred == y).float().mean().item()
    return a, math.sqrt(a * (1 - a) / len(y))


def labels_alone(ftrain, fvalid, y_valid, labelled, y, hidden_dims, steps=2000, lr=1e-3, seed=0):
    """M2's classifier network, freshly initialized, trained by cross-entropy on the labelled
    features alone (full batch, Adam); its held-out accuracy."""
    from pyro_vae.models.ssvae import Classifier

    torch.manual_seed(seed)
    net = Classifier(ftrain.shape[1], 10, hidden_dims)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xl, yl = ftrain[labelled], y[labelled]
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xl), yl).backward()
        opt.step()
    with torch.no_grad():
        return accuracy(net(fvalid).argmax(-1), y_valid)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA)")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--m1-epochs", type=int, default=200)
    p.add_argument("--m1-hidden", type=int, nargs="+", default=[600, 600])
    p.add_argument("--m1-z-dim", type=int, default=50)
    p.add_argument("--m2-epochs", type=int, default=100)
    p.add_argument("--m2-hidden", type=int, nargs="+", default=[500])
    p.add_argument("--m2-z-dim", type=int, default=50)
    p.add_argument("--alpha", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    pyro.set_rng_seed(args.seed)  # Python's, NumPy's and torch's generators
    data = DataConfig(dataset="mnist10k", binarize="dynamic", seed=args.seed, labels=args.labels, root=args.data)
    train, valid = load_splits(data)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    m1 = build_vae(train.image_shape, z_dim=args.m1_z_dim, hidden_dims=tuple(args.m1_hidden))
    h1 = fit(m1, train, valid, epochs=args.m1_epochs, batch_size=100, lr=1e-3, seed=args.seed, progress=False)
    m1.eval()
    fmap = FeatureMap(m1.q, m1.decoder, m1.likelihood, m1.z_dim).standardize(train.x)
    f_train, f_valid = fmap(train.x), fmap(valid.x)
    t1 = time.perf_counter()
    shape = (1, 1, f_train.shape[1])
    ftrain = ImageData(x=f_train, y=train.y, image_shape=shape, name="M1 features (train)")
    fvalid = ImageData(x=f_valid, y=valid.y, image_shape=shape, name="M1 features (valid)")
    torch.manual_seed(args.seed)
    m2 = build_model(
        dict(
            model="ssvae",
            image_shape=list(shape),
            z_dim=args.m2_z_dim,
            hidden_dims=list(args.m2_hidden),
            likelihood="gaussian",
            scale=None,  # learned per feature
            alpha=args.alpha,
        )
    )
    semi, semi_valid, _ = for_model(m2, ftrain, fvalid, data)
    config = TrainConfig(epochs=args.m2_epochs, batch_size=100, lr=1e-3, seed=args.seed)
    trainer = make_trainer(m2, semi, semi_valid, config, with_labels=True)
    pyro.set_rng_seed(args.seed)
    h2 = trainer.run(args.m2_epochs, progress=False)
    m2.eval()
    t2 = time.perf_counter()
    acc, se = accuracy(m2.classify(f_valid), valid.y)
    base, base_se = labels_alone(f_train, f_valid, valid.y, semi.labelled, train.y, tuple(args.m2_hidden))
    result = dict(
        labels=args.labels,
        accuracy=acc,
        accuracy_se=se,
        labels_alone=base,
        labels_alone_se=base_se,
        m1_valid_neg_elbo=h1.valid_loss[-1],
        m2_valid_loss=h2.valid_loss[-1],
        m1_seconds=t1 - t0,
        m2_seconds=t2 - t1,
        options=vars(args),
    )
    print(
        f"M1+M2, {args.labels} labels: held-out accuracy {100 * acc:.2f} % ± {100 * se:.2f}; the classifier on "
        f"the labelled M1 features alone {100 * base:.2f} % ± {100 * base_se:.2f} (M1 valid −ELBO "
        f"{h1.valid_loss[-1]:.2f}, {t1 - t0:.0f} s; M2 {t2 - t1:.0f} s)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
