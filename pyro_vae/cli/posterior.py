"""``pyro-vae posterior``: NUTS on p(z|x) of a trained VAE against its guide for one data
point (pair plot, Pareto k̂, divergences)."""

from pathlib import Path

from .. import runs
from ..data import check_split
from ..runs import load_run
from .common import UsageError, nonnegative_int, positive_int, run_data


def add_arguments(p):
    p.add_argument("run_dir", help="a run folder of a VAE written by pyro-vae train")
    p.add_argument("--index", type=nonnegative_int, default=17, help="which data point of the split")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"], help="data split")
    p.add_argument("--data", default=None, help="data folder; if not given: the run's, else $PYRO_VAE_DATA")
    p.add_argument("--num-samples", type=positive_int, default=500, help="NUTS draws per chain")
    p.add_argument("--warmup", type=nonnegative_int, default=500, help="NUTS warm-up steps per chain")
    p.add_argument("--chains", type=positive_int, default=2, help="NUTS chains, run one after another")
    p.add_argument(
        "--is-samples", type=positive_int, default=5000, help="draws of q(z|x) for the importance weights and Pareto k̂"
    )
    p.add_argument(
        "--dims",
        type=nonnegative_int,
        nargs="+",
        default=None,
        help="latent coordinates of the pair plot; if not given: the 4 narrowest under NUTS",
    )
    p.add_argument("--out", default=None, help="output folder; if not given: RUN_DIR")
    p.add_argument("--seed", type=int, default=0, help="seed of NUTS and of the guide's draws")
    p.add_argument("--no-jit", action="store_true", help="do not JIT-compile the potential energy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from ..eval import posterior  # here, not at the top: ArviZ takes seconds to import
    from ..plots import plot_posterior_pairs

    model, run = load_run(args.run_dir)
    check_split(run["data"]["dataset"], args.split)  # digits, mnist10k: no test split
    kind = run["model"].get("model", "vae")
    if kind != "vae":
        raise UsageError(
            f"pyro-vae posterior compares a VAE's guide with NUTS; this run holds a {kind!r} model "
            "(the autoencoder's point mass has no density, conditional models are not supported here)"
        )
    data, data_info = run_data(run, args.split, args.data)
    if not 0 <= args.index < len(data):
        raise UsageError(
            f"--index {args.index} is out of range: the {args.split} split of "
            f"{data_info.dataset} has {len(data)} points"
        )
    x = data.x[args.index]
    idata = posterior.nuts_posterior(
        model,
        x,
        num_samples=args.num_samples,
        warmup_steps=args.warmup,
        num_chains=args.chains,
        seed=args.seed,
        jit_compile=not args.no_jit,
        progress=not args.no_progress,
    )
    result = posterior.compare_to_nuts(model, x, idata, num_samples=args.is_samples)
    guide = run["model"].get("guide", "diagonal")
    out = Path(args.out or args.run_dir)
    png = plot_posterior_pairs(
        idata,
        {guide: posterior.guide_draws(model, x, num_samples=1000)},
        out / f"posterior_{args.index}.png",
        dims=args.dims,
        title=f"{data_info.dataset} {args.split}[{args.index}]: NUTS vs the {guide} guide (k̂ = {result['khat']:.2f})",
    )
    result.update(index=args.index, split=args.split, guide=guide, figure=png.name)
    runs.save_json(out / f"posterior_{args.index}.json", result)
    print(
        f"{args.split}[{args.index}], {guide} guide: Pareto k̂ = {result['khat']:.3f} "
        f"({'reliable' if result['khat'] < posterior.KHAT_THRESHOLD else 'NOT reliable'}: k̂ < 0.7 needed); "
        f"log p(x) = {result['log_px']:.2f} ± {result['log_px_stderr']:.2f}, ELBO = {result['elbo']:.2f}, "
        f"KL(q‖p) = {result['kl_q_p']:.2f}, KL(p‖q) = {result['kl_p_q']:.2f} nats; NUTS: R-hat ≤ "
        f"{result['max_rhat']:.3f}, ESS ≥ {result['min_ess_bulk']:.0f}, {result['divergences']} divergences"
    )
    print(f"wrote {png} and {out / f'posterior_{args.index}.json'}")
    return 0
