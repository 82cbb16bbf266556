"""Labels when you have them: the semi-supervised VAE (M2) against the same classifier on the labels alone.

A few of the scikit-learn 8x8 digits keep their label, the rest are unlabelled. The
semi-supervised VAE is trained with Pyro's ``SVI``: labelled batches observe y, unlabelled
batches sum y out exactly (``TraceEnum_ELBO`` over the guide's enumerated site). Its
classifier q(y|x) is then compared, on held-out digits, with the same network trained by
cross-entropy on the labelled digits alone; a grid of samples per requested digit is saved.

    python examples/ssvae.py --labels 50 --epochs 100 --out ssvae_out
"""

import argparse
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_vae.data import ImageData, load_dataset
from pyro_vae.data.semisupervised import semisupervised
from pyro_vae.models.build import build_ssvae
from pyro_vae.models.ssvae import Classifier, ssvae_objective
from pyro_vae.plots import save_class_samples


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=50, help="labelled training digits, balanced per class")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ssvae_out")
    args = p.parse_args()
    pyro.set_rng_seed(args.seed)  # seeds torch, random and numpy
    full = load_dataset("digits", "train", binarize="static", seed=args.seed)
    perm = torch.randperm(len(full.x))
    held, train_idx = perm[:400], perm[400:]
    train = ImageData(x=full.x[train_idx], y=full.y[train_idx], image_shape=full.image_shape, name="digits")
    valid_x, valid_y = full.x[held], full.y[held]
    data = semisupervised(train, args.labels, seed=args.seed)

    model = build_ssvae(full.image_shape, z_dim=args.z_dim, hidden_dims=(args.hidden,))
    elbo, optim = ssvae_objective(), Adam({"lr": 1e-3})
    # one optimizer, two Pyro ELBOs: Trace_ELBO where y is observed, TraceEnum_ELBO where it is summed out
    svi_labelled = SVI(model.model, model.guide, optim, loss=elbo.trace)
    svi_unlabelled = SVI(model.model, model.guide, optim, loss=elbo.enum)
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        total, steps = 0.0, 0
        for xb, yb in data.batches(args.batch_size, generator=g):
            labelled = bool((yb >= 0).all())
            svi = svi_labelled if labelled else svi_unlabelled
            # each batch stands for its part of the data: N_l labelled or N − N_l unlabelled points
            n = len(data.labelled) if labelled else len(data.unlabelled)
            total += svi.step(xb, yb if labelled else None, num_data=n)
            steps += 1
        if epoch % max(1, args.epochs // 5) == 0 or epoch == args.epochs - 1:
            print(
                f"epoch {epoch + 1}: mean loss per step {total / steps:.1f} (a step's loss stands for its part of the data)"
            )
    m2 = (model.classify(valid_x) == valid_y).double().mean().item()

    torch.manual_seed(args.seed)
    clf = Classifier(train.x_dim, 10, (args.hidden,))
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    lab = data.labelled
    for _ in range(args.epochs * 10):
        loss = torch.nn.functional.cross_entropy(clf(train.x[lab]), train.y[lab])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        alone = (clf(valid_x).argmax(-1) == valid_y).double().mean().item()
    print(f"held-out accuracy with {args.labels} labels: M2 {100 * m2:.1f} %, labels alone {100 * alone:.1f} %")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_class_samples(model, full.image_shape, out / "ssvae_samples.png")
    print(f"wrote {out / 'ssvae_samples.png'}")


if __name__ == "__main__":
    main()
