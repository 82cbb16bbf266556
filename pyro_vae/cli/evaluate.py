"""``pyro-vae evaluate``: NLL by importance sampling, −ELBO, IWAE bounds and active units
of a trained run on one split of its data set (printed, and saved as JSON)."""

from pathlib import Path

import pyro

from .. import runs
from ..contract import contract
from ..data import check_split
from ..eval import likelihood_report
from ..runs import WEIGHTS, load_run
from .common import UsageError, check_device, positive_int, run_data


def add_arguments(p):
    p.add_argument("run_dir", help="a run folder written by pyro-vae train")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"], help="data split")
    p.add_argument(
        "-K", "--num-samples", type=positive_int, default=5000, help="importance samples per data point for log p(x)"
    )
    p.add_argument(
        "--iwae-k",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="K",
        help="K of the IWAE bounds L_K to report, each dividing -K; if not given: 5, 50 and the run's own K",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="evaluate only the first N data points"
    )
    p.add_argument(
        "--weights",
        default="best",
        choices=WEIGHTS,
        help="best: the best validation epoch's, if the run kept them; last: the latest (the moving "
        "average, if the run kept one); raw: the latest trained weights",
    )
    p.add_argument("--batch-size", type=positive_int, default=100, help="data points per batch")
    p.add_argument(
        "--chunk-size", type=positive_int, default=100, help="samples per chunk; memory grows as batch × chunk × x_dim"
    )
    p.add_argument(
        "--data", default=None, help="data folder; if not given: the run's, else $PYRO_VAE_DATA, else ./data"
    )
    p.add_argument("--out", default=None, help="JSON path; if not given: RUN_DIR/eval_<split>.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:N for GPU N)")
    p.add_argument(
        "--traced",
        action="store_true",
        help="compute the log weights from a traced graph per chunk shape, compiled and replayed "
        "(faster; seconds of compilation first; see docs/speed.md)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    """−ELBO, −L_K and NLL = −log p̂(x) (importance sampling, K samples) with their standard
    errors, and the active units, on one split of the run's data set; printed and saved as JSON."""
    K = args.num_samples
    if args.iwae_k is not None:
        for k in args.iwae_k:
            if k < 1 or K % k:
                raise UsageError(
                    f"--iwae-k {k}: each K must be a divisor of -K {K} (L_K is "
                    f"estimated from the -K samples split into groups of K)"
                )
    check_device(args.device)
    model, run = load_run(args.run_dir, args.device, weights=args.weights)
    check_split(run.get("data", {}).get("dataset", "digits"), args.split)  # digits, mnist10k: no test split
    offers = contract(model)
    if offers.classifies:  # the semi-supervised VAE: accuracy and −U(x)
        return _evaluate_ssvae(model, run, args)
    ks = args.iwae_k
    if ks is None:
        train_cfg = run.get("train", {})
        own = train_cfg.get("particles") if train_cfg.get("objective") in ("iwae", "IWAE", "IWAE_ELBO") else None
        ks = [k for k in (5, 50, own) if k and k > 1 and K % k == 0]
    ks = sorted(set(ks) - {1})
    data, data_cfg = run_data(run, args.split, args.data, args.limit)
    conditional = offers.conditional  # a conditional VAE takes (x, c), as in training
    if conditional:
        data = model.prepare_data(data)
    extra = (data.y,) if conditional else ()
    pyro.set_rng_seed(args.seed)
    report = likelihood_report(
        model,
        data.x,
        *extra,
        num_samples=K,
        ks=ks,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
        traced=args.traced,
    )
    result = dict(run_dir=str(args.run_dir), dataset=data_cfg.dataset, split=args.split, weights=args.weights, **report)
    print(
        f"{data.name}: {report['n']} data points, K={K} importance samples, {report['seconds']:.1f} s; "
        "nats per data point, ± standard error over the data points"
    )
    print(f"  {'-ELBO':16s}{report['neg_elbo']:9.3f} ± {report['neg_elbo_stderr']:.3f}")
    for k in ks:
        print(f"  {f'-L_{k}':16s}{report['neg_iwae'][str(k)]:9.3f} ± {report['neg_iwae_stderr'][str(k)]:.3f}")
    print(
        f"  {f'NLL (K={K})':16s}{report['nll']:9.3f} ± {report['nll_stderr']:.3f}  "
        f"(Monte Carlo part ± {report['nll_mc_stderr']:.3f}; median ESS {report['median_ess']:.0f})"
    )
    print(f"  {'active units':16s}{report['active_units']:>9d} of {report['latent_units']}")
    out = Path(args.out or Path(args.run_dir) / f"eval_{args.split}.json")
    runs.save_json(out, result)
    print(f"wrote {out}")
    return 0


def _evaluate_ssvae(model, run, args):
    """The semi-supervised VAE on a split: the accuracy of argmax_y q(y|x) against the labels,
    and −U(x), the −ELBO with y summed out (no labels given, so no α term), one draw of z per
    point and class; printed and saved as JSON."""
    import time

    import torch

    from ..data import ImageData
    from ..models.ssvae import ssvae_objective
    from ..train.trainer import evaluate_loss

    t0 = time.perf_counter()
    data, data_cfg = run_data(run, args.split, args.data, args.limit)
    if data.y is None:
        raise UsageError(f"{data.name} has no labels: the accuracy of q(y|x) needs them")
    x = data.x.to(args.device)
    with torch.no_grad():
        pred = torch.cat([model.classify(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
    correct = (pred.cpu() == data.y).double()
    accuracy, acc_se = correct.mean().item(), (correct.std() / len(correct) ** 0.5).item()
    pyro.set_rng_seed(args.seed)
    unlabelled = ImageData(x=data.x, image_shape=data.image_shape, name=data.name).to(args.device)
    neg_elbo = evaluate_loss(model, unlabelled, ssvae_objective(), batch_size=args.batch_size, with_labels=True)
    result = dict(
        run_dir=str(args.run_dir),
        dataset=data_cfg.dataset,
        split=args.split,
        weights=args.weights,
        n=len(data),
        accuracy=accuracy,
        accuracy_stderr=acc_se,
        neg_elbo=neg_elbo,
        seconds=time.perf_counter() - t0,
    )
    print(f"{data.name}: {len(data)} data points, {result['seconds']:.1f} s")
    print(f"  {'accuracy':16s}{100 * accuracy:9.2f} % ± {100 * acc_se:.2f}  (argmax_y q(y|x) against the labels)")
    of = "per M1's features, M2's bound" if run.get("model", {}).get("model") == "m1m2" else "per data point"
    print(f"  {'-ELBO':16s}{neg_elbo:9.3f}  nats {of} (y summed out, no labels)")
    out = Path(args.out or Path(args.run_dir) / f"eval_{args.split}.json")
    runs.save_json(out, result)
    print(f"wrote {out}")
    return 0
