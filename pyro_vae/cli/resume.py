"""``pyro-vae train --resume RUN_DIR``: the options that give the run's stored settings
(``run.json``'s ``model``, ``data`` and ``train``), with those that may change
(:data:`RESUME_MAY_CHANGE`) taken from the command line, and any other given option
refused unless it leaves the run's settings as they are."""

import argparse
from pathlib import Path

from .. import runs
from ..config import DataConfig, ModelConfig, TrainConfig
from .common import UsageError

#: Options that may differ from the run's when resuming; any other option given with
#: --resume must give the run's settings.
RESUME_MAY_CHANGE = (
    "epochs",
    "device",
    "no_progress",
    "checkpoint_every",
    "data",
    "download",
    "resume",
    "out",
    "overwrite",
    "ddp_timeout",
)


def options_of(run):
    """The ``pyro-vae train`` options (argparse ``dest`` → value) that give the settings of
    ``run`` (a ``run.json`` in this version's format)."""
    m = ModelConfig.from_dict(run["model"])
    d = DataConfig.from_dict(run.get("data", {}))
    t = TrainConfig.from_dict(run["train"])
    return dict(
        dataset=d.dataset,
        data=d.root,
        binarize=d.binarize,
        labels=d.labels,
        label_seed=d.label_seed,
        labelled_every=d.labelled_every,
        unlabelled=d.unlabelled,
        model=m.model,
        likelihood=m.likelihood,
        scale=m.scale,
        network=m.network,
        hidden=list(m.hidden_dims),
        z_dim=m.z_dim,
        guide=m.guide,
        prior=run["model"].get("prior"),
        pseudo_inputs=run["model"].get("pseudo_inputs"),
        dropout=run["model"].get("dropout"),
        alpha=run["model"].get("alpha"),
        m1_config=run["model"].get("m1"),
        objective=t.objective,
        particles=t.particles,
        lr=t.lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        batch_size=t.batch_size,
        epochs=t.epochs,
        seed=t.seed,
        device=t.device,
        clip_norm=t.clip_norm,
        lr_schedule=t.lr_schedule,
        lr_final=t.lr_final,
        schedule_epochs=t.schedule_epochs,
        kl_warmup=t.kl_warmup,
        ema=t.ema_decay,
        keep_best=t.keep_best,
        fused=t.fused,
        flush_denormal=t.flush_denormal,
        compile=t.compile,
        traced=t.traced,
        checkpoint_every=run.get("checkpoint_every"),
    )


def given_options(args, add_arguments):
    """The names (``dest``) of the train options given on the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = getattr(args, "argv", None)
    if argv is None:  # called without main(): options that differ from their defaults
        return {a.dest for a in parser._actions if getattr(args, a.dest, a.default) != a.default}
    argv = list(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv[argv.index("train") + 1 :] if "train" in argv else argv)
    return set(vars(given))


def read_run_dir(run_dir, flag):
    """The ``run.json`` of the run folder ``run_dir``, after checking that it holds one and its
    ``checkpoint.pt``.

    :param str flag: the option that named the folder (``"--resume"``, ``"--init"``), for the error.
    :raises UsageError: if either file is missing.
    """
    run_dir = Path(run_dir)
    for name in (runs.RUN_JSON, runs.CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(
                f"{flag} {run_dir}: there is no {name} there; is it a run folder written by pyro-vae train?"
            )
    return runs.read_run(run_dir / runs.RUN_JSON)


def resume_args(args, add_arguments, settings_of):
    """The options of the run in ``args.resume``, with those that may change
    (:data:`RESUME_MAY_CHANGE`) taken from the command line, and the run's record of the
    weights it started from (``run.json``'s ``init``, or None) as ``resumed_init``.

    :param settings_of: ``settings_of(options, image_shape) -> (model, data, train)``, the
        settings a namespace of options gives (compared without the options that may change).
    :raises UsageError: if the folder holds no run, or an option given on the command
        line changes the run's settings, naming each.
    """
    run_dir = Path(args.resume)
    run = read_run_dir(run_dir, "--resume")
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise UsageError(f"--resume continues the run in its own folder {run_dir}; drop --out {args.out}")
    if "train" not in run:
        raise UsageError(
            f"--resume {run_dir}: its run.json stores no training settings (written by an older "
            "pyro-vae, or by a Checkpointer without them), so the run cannot be resumed"
        )
    stored = options_of(run)
    given = given_options(args, add_arguments)
    image_shape = run["model"].get("image_shape", [1, 28, 28])
    base = settings_of(argparse.Namespace(**{**vars(args), **stored}), image_shape)
    diffs = []
    for k in sorted(given - set(RESUME_MAY_CHANGE)):
        value = getattr(args, k)
        value = None if k == "scale" and value == "learned" else value
        trial = argparse.Namespace(**{**vars(args), **stored, k: value})
        try:
            changed = settings_of(trial, image_shape) != base
        except UsageError:
            changed = True
        if changed:
            diffs.append(f"--{k.replace('_', '-')} {value!r} (the run has {stored.get(k)!r})")
    if diffs:
        raise UsageError(
            f"--resume {run_dir}: the given options differ from the run's (its run.json): "
            f"{', '.join(diffs)}; drop them to continue the run as it was, or start a new run "
            "with another --out"
        )
    merged = dict(vars(args))
    for k, v in stored.items():
        if not (k in RESUME_MAY_CHANGE and k in given):
            merged[k] = v
    merged["resumed_init"] = run.get("init")
    return argparse.Namespace(**merged)
