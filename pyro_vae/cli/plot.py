"""``pyro-vae plot``: figures of saved runs without retraining (latent maps side by side,
decoded manifolds, samples, reconstructions, interpolations) and the dead-zone numbers."""

import math
from pathlib import Path

import torch

from .. import eval as evaluation
from .. import plots, runs
from ..config import DataConfig
from ..contract import contract
from ..data import DataError, load_dataset
from ..eval import DigitClassifier, classifier_accuracy, train_classifier
from ..runs import load_run
from .common import UsageError, check_device, int_at_least, positive_int
from .figures import write_missing_run_figures

#: The labelled data a run's latent map and classifier use, by the run's data set:
#: binarized MNIST has no labels, so the labelled MNIST test images (mnist10k) stand in.
LABELLED_DATA = {"binarized-mnist": "mnist10k"}


def add_arguments(p):
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders, e.g. an autoencoder's and a VAE's: drawn side by side",
    )
    p.add_argument("--out", default=None, help="folder for the figures; if not given: RUN_DIR/plots of the first run")
    p.add_argument("--data", default=None, help="data folder; if not given: $PYRO_VAE_DATA, else ./data")
    p.add_argument("-n", type=positive_int, default=64, help="samples per model")
    p.add_argument("--grid", type=positive_int, default=15, help="side of the decoded manifold's grid")
    p.add_argument("--steps", type=int_at_least(2), default=10, help="decoded images per interpolation")
    p.add_argument("--draws", type=positive_int, default=2000, help="N(0, I) draws for the dead-zone numbers")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="use only the first N test images")
    p.add_argument(
        "--classifier-epochs",
        type=positive_int,
        default=10,
        help="epochs of the independent classifier, trained once and kept in OUT/classifier.pt",
    )
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier's confidence")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, draws and classifier")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:N for GPU N)")


def _plot_test_data(run, root, limit):
    """Labelled test images for a run: its data set's validation split, binarized as in
    training; for binarized MNIST the labelled MNIST test images (``mnist10k``)."""
    cfg = DataConfig.from_dict(run.get("data", {}))
    dataset = cfg.dataset
    labelled = LABELLED_DATA.get(dataset, dataset)
    try:
        data = load_dataset(labelled, "valid", root, binarize="static" if cfg.binary else None, seed=cfg.seed)
    except DataError as e:
        if labelled == dataset:
            raise
        print(f"note: no labelled data for the maps and the classifier ({e}); using {dataset} without labels")
        labelled, data = None, load_dataset(dataset, "valid", root)
    if limit is not None:
        data.x = data.x[:limit]
        data.y = data.y[:limit] if data.y is not None else None
    return data, (labelled if data.y is not None else None)


def _plot_classifier(labelled, root, out, epochs, seed, device):
    """The independent classifier for ``labelled`` data, from ``out/classifier.pt`` if it
    was trained there with the same settings, else trained on the train split and saved."""
    train = load_dataset(labelled, "train", root)
    valid = load_dataset(labelled, "valid", root)
    meta = dict(dataset=labelled, epochs=epochs, seed=seed, image_shape=list(train.image_shape))
    path = Path(out) / "classifier.pt"
    if path.is_file():
        state = runs.load_checkpoint(path)
        if state.get("meta") == meta:
            clf = DigitClassifier(train.image_shape, train.num_classes)
            runs.files.load_weights(clf, state["model"], what="classifier")
            clf = clf.to(device).eval()
            print(f"classifier: {path} ({labelled}), valid accuracy {classifier_accuracy(clf, valid.x, valid.y):.3f}")
            return clf
    clf = train_classifier(train, epochs=epochs, seed=seed, device=device, progress=True)
    runs.save_checkpoint(path, dict(model=clf.state_dict(), meta=meta))
    print(
        f"classifier: trained on {train.name} ({len(train)} images, {epochs} epochs), valid accuracy "
        f"{classifier_accuracy(clf, valid.x, valid.y):.3f}; saved {path}"
    )
    return clf


def run(args):
    """Figures of one or more saved runs, without retraining: latent maps side by side,
    decoded manifolds, samples, reconstructions, interpolations, and the dead-zone numbers."""
    check_device(args.device)
    loaded, names = [], []
    for run_dir in args.run_dirs:
        model, run = load_run(run_dir, args.device)
        if getattr(model, "prior_kind", "fixed") == "vamp":
            raise UsageError(
                f"{run_dir} holds a VAE with the VampPrior; pyro-vae plot measures the latent space "
                "against p(z) = N(0, I), which is not this model's prior"
            )
        write_missing_run_figures(model, run, run_dir, args.data)
        if contract(model).conditional:
            raise UsageError(
                f"{run_dir} holds a conditional model ({run['model'].get('model')}); pyro-vae plot "
                "draws the latent space of unconditional models (vae, ae)"
            )
        name = Path(run_dir).resolve().name
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
        loaded.append((model, run))
    datasets = {run.get("data", {}).get("dataset") for _, run in loaded}
    shapes = {tuple(run["model"]["image_shape"]) for _, run in loaded}
    if len(datasets) > 1 or len(shapes) > 1:
        raise UsageError(
            f"the runs were trained on different data ({', '.join(map(str, sorted(datasets)))}); "
            "compare runs of the same data set"
        )
    shape = shapes.pop()
    out = Path(args.out or Path(args.run_dirs[0]) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    data, labelled = _plot_test_data(loaded[0][1], args.data, args.limit)
    clf = None
    if labelled and not args.no_classifier:
        clf = _plot_classifier(labelled, args.data, out, args.classifier_epochs, args.seed, args.device)
    x = data.x.to(args.device)
    panels, manifolds, samples, reports = [], {}, {}, []
    for name, (model, _run), run_dir in zip(names, loaded, args.run_dirs):
        title = f"{name} ({type(model).__name__}, z_dim={model.z_dim})"
        torch.manual_seed(args.seed)
        samples[title] = model.sample(args.n).cpu()
        plots.save_grid(samples[title], shape, out / f"{name}_samples.png", nrow=int(math.sqrt(args.n)) or 1)
        plots.save_reconstructions(model, x[:32], shape, out / f"{name}_reconstructions.png")
        k = min(6, len(x) // 2)
        plots.save_interpolations(model, x[:k], x[k : 2 * k], shape, out / f"{name}_interpolations.png", args.steps)
        if model.z_dim < 2:
            print(f"{name}: a 1-D latent space has no map or manifold to draw")
        else:
            codes = evaluation.latent_codes(model, x)
            manifolds[title] = plots.decode_manifold(model, args.grid, codes)
            plots.save_grid(manifolds[title], shape, out / f"{name}_manifold.png", nrow=args.grid)
            panel = plots.latent_map_panel(model, x, data.y, draws=args.draws)
            panel["title"] = f"{name}: " + panel["title"].split(": ", 1)[1]
            panels.append(panel)
        report = evaluation.dead_zone_report(model, x, clf, n_draws=args.draws, seed=args.seed)
        reports.append(dict(report, run_dir=str(run_dir)))
    written = []
    if panels:
        written.append(plots.plot_latent_maps(panels, out / "latent_map.png"))
        written.append(
            plots.plot_image_grids(
                manifolds,
                shape,
                out / "manifolds.png",
                nrow=args.grid,
                suptitle="decoded at Gaussian quantiles of each model's frame",
            )
        )
    written.append(plots.plot_image_grids(samples, shape, out / "samples.png", suptitle="decoded z ~ N(0, I)"))
    table = evaluation.dead_zone_table(reports, names)
    runs.save_json(out / "dead_zones.json", dict(zip(names, reports)))
    (out / "dead_zones.md").write_text(table + "\n")
    print(f"test images: {data.name}, {len(x)}; {args.draws} draws u ~ N(0, I) in each model's frame")
    print(table)
    print(f"wrote {len(list(out.glob('*.png')))} figures and dead_zones.json/.md to {out}")
    return 0
