"""The ``pyro-vae`` command line.

    pyro-vae train                       # digits, offline, about a minute on a CPU
    pyro-vae train --dataset binarized-mnist --data ../shared/data --epochs 10 --out runs/bmnist
    pyro-vae sample runs/bmnist -n 64
    pyro-vae evaluate runs/bmnist --split valid -K 5000   # NLL, -ELBO, -L_K, active units
    pyro-vae plot runs/ae runs/vae --out runs/compare     # latent maps, manifolds, dead zones

``train`` writes into its output folder ``checkpoint.pt`` (tensors only), ``run.json``
(configuration and history) and PNG figures (loss curves, reconstructions, samples).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import pyro
import torch

from . import checkpoints, plots
from . import eval as evaluation  # likelihood, classifier, latent space (not posterior: ArviZ)
from . import distributed  # data-parallel training under torchrun
from .data import DATASETS, DataError, check_split, load_dataset
from .eval import DigitClassifier, classifier_accuracy, likelihood_report, train_classifier
from .models import build_model
from .runs import WEIGHTS, load_run
from .objectives import OBJECTIVES, ALIASES
from .plots import plot_losses, save_reconstructions, save_samples
from .plots import save_class_samples, save_completions  # conditional VAE
from .training import LR_SCHEDULES, NonFiniteLossError, Trainer
from . import gradvar  # score function vs reparameterization


class UsageError(ValueError):
    """An invalid command-line option."""


# ---- run folders -------------------------------------------------------------------------
def _check_out_dir(out, overwrite):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(p.name != checkpoints.LOCK for p in out.iterdir()):
        if (out / checkpoints.RUN_JSON).exists() or (out / checkpoints.CHECKPOINT).exists():
            if not overwrite:
                raise UsageError(f"{out} already holds a run; pass --overwrite to replace it, "
                                 "or choose another --out")
        elif not overwrite:
            raise UsageError(f"{out} is not empty and holds no run; pass --overwrite to write into it")
    return out


def _lock_run_dir(out, overwrite=False, resume=False):
    """Take the run folder's lock (:class:`~pyro_vae.checkpoints.RunLock`), creating the
    folder if need be, and check under the lock that it may be written (the
    ``--overwrite`` check, so that of two processes starting on one fresh folder one
    is refused). A failure removes the folder again if it was created here.

    :returns: the held lock; release it when the run is written.
    :raises UsageError: if the folder cannot be created or written, or holds
        something it may not replace. :raises checkpoints.RunLockedError: if another
        live process writes it (naming its PID)."""
    what = "run folder" if resume else "--out folder"
    lock = checkpoints.RunLock(out, what=what)
    try:
        lock.acquire()
    except checkpoints.RunLockedError:
        raise
    except checkpoints.CheckpointError as e:
        raise UsageError(str(e)) from None
    try:
        if not resume:
            _check_out_dir(out, overwrite)
    except BaseException:
        lock.release(remove_created=True)
        raise
    return lock


def _lock_for_training(out, overwrite, resume):
    """:func:`_lock_run_dir` on rank 0 (the writer); under torchrun every rank learns
    whether rank 0 could start, so that none waits for a rank that has stopped."""
    lock, error = None, None
    if distributed.is_main():
        try:
            lock = _lock_run_dir(out, overwrite, resume)
        except (UsageError, checkpoints.CheckpointError) as e:
            error = e
    if distributed.is_initialized():
        first = distributed.all_gather_object(None if error is None else str(error))[0]
        if first is not None and error is None:
            raise UsageError(f"rank {distributed.rank()}: rank 0 could not start ({first})")
    if error is not None:
        raise error
    return lock


def _check_device(device):
    """``--device``: cpu, or cuda[:N] on a machine with that GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise UsageError(f"--device {device}: pyro-vae runs on cpu or cuda (cuda:N), not on {dev.type}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for, but no CUDA GPU is available")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there is no GPU {dev.index} (this machine has "
                         f"{torch.cuda.device_count()})")


# ---- train -------------------------------------------------------------------------------
def add_train_arguments(p):
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default: digits, offline)")
    d.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    d.add_argument("--download", action="store_true", help="download missing data files (needs network)")
    d.add_argument("--binarize", default=None, choices=["static", "dynamic", "none"],
                   help="binarize grey levels for a Bernoulli likelihood")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vae", help="model kind (default: vae)")
    m.add_argument("--likelihood", default="auto", choices=["auto", "bernoulli", "gaussian"],
                   help="p(x|z); auto: bernoulli for binary data, gaussian otherwise")
    m.add_argument("--scale", type=float, default=None, help="fixed Gaussian scale (default: learned per pixel)")
    m.add_argument("--network", default="mlp", choices=["mlp", "conv"])
    m.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="hidden layer sizes of the MLP (default: 400, or 128 for 8×8 digits)")
    m.add_argument("--z-dim", type=int, default=None, help="latent dimension (default: 50, or 8 for digits)")
    m.add_argument("--guide", default="diagonal", help="guide family (default: diagonal)")
    m.add_argument("--prior", default=None, choices=["fixed", "learned"],
                   help="conditional VAEs: p(z|c) = N(0, I) or a prior network "
                        "(default: fixed for cvae, learned for cvae-quadrant)")
    o = p.add_argument_group("optimization")
    o.add_argument("--objective", default="elbo", help=f"objective: {', '.join(sorted(OBJECTIVES))}")
    o.add_argument("--particles", type=int, default=1, help="L, particles per data point")
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="cpu", help="cpu or cuda")
    o.add_argument("--clip-norm", type=float, default=None, help="clip the gradient norm to this value")
    o.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="learning rate per epoch: constant, or cosine/exponential from --lr to --lr-final "
                        "over --schedule-epochs (default: constant)")
    o.add_argument("--lr-final", type=float, default=None, help="learning rate at the schedule's end (default: lr/10)")
    o.add_argument("--schedule-epochs", type=int, default=None, metavar="T",
                   help="epochs over which the schedule reaches --lr-final (default: --epochs)")
    o.add_argument("--kl-warmup", type=float, default=0.0, metavar="EPOCHS",
                   help="raise the KL term's weight β linearly from 0 to 1 over this many epochs (default: 0, off)")
    o.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="validate and keep an exponential moving average of the weights with this decay, "
                        "e.g. 0.999 (default: off)")
    o.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="do not keep the weights of the best validation epoch (kept by default; "
                        "evaluate uses them)")
    o.add_argument("--fused", action="store_true",
                   help="the optimizer's fused step, one kernel for all parameters (faster; see docs/speed.md)")
    o.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder and decoder networks (slower for the MLP on CPU; see docs/speed.md)")
    o.add_argument("--ddp-timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in a collective before it "
                        f"stops with an error (default: {distributed.DEFAULT_TIMEOUT:g})")
    r = p.add_argument_group("output")
    r.add_argument("--out", default=None, help="run folder (default: runs/<dataset>)")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save a checkpoint every N steps as well as at each epoch end")
    r.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (options default to the run's)")


def _validate_train_args(args):
    for name in ("epochs", "batch_size", "particles"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.z_dim is not None and args.z_dim < 1:
        raise UsageError(f"--z-dim must be a positive integer, got {args.z_dim}")
    if args.hidden is not None and (not args.hidden or any(h < 1 for h in args.hidden)):
        raise UsageError(f"--hidden sizes must be positive integers, got {' '.join(map(str, args.hidden))}")
    if args.scale is not None and not (args.scale > 0 and math.isfinite(args.scale)):
        raise UsageError(f"--scale must be a positive number, got {args.scale}")
    timeout = getattr(args, "ddp_timeout", distributed.DEFAULT_TIMEOUT)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(f"--ddp-timeout must be a positive number of seconds, got {timeout}")
    key = ALIASES.get(args.objective, args.objective)
    if key not in OBJECTIVES:
        raise UsageError(f"unknown --objective {args.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    _check_device(args.device)
    if getattr(args, "checkpoint_every", None) is not None and args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be a positive number of steps, got {args.checkpoint_every}")
    if args.clip_norm is not None and not args.clip_norm > 0:
        raise UsageError(f"--clip-norm must be a positive number, got {args.clip_norm}")
    if getattr(args, "lr_final", None) is not None and not (args.lr_final > 0 and math.isfinite(args.lr_final)):
        raise UsageError(f"--lr-final must be a positive number, got {args.lr_final}")
    if getattr(args, "schedule_epochs", None) is not None and args.schedule_epochs < 1:
        raise UsageError(f"--schedule-epochs must be a positive integer, got {args.schedule_epochs}")
    if not (getattr(args, "kl_warmup", 0.0) >= 0 and math.isfinite(args.kl_warmup)):
        raise UsageError(f"--kl-warmup must be a number of epochs ≥ 0, got {args.kl_warmup}")
    if getattr(args, "ema", None) is not None and not 0 < args.ema < 1:
        raise UsageError(f"--ema must be a decay in (0, 1), e.g. 0.999, got {args.ema}")
    if getattr(args, "kl_warmup", 0.0) and ALIASES.get(args.objective, args.objective) not in ("elbo", "meanfield",
                                                                                                "tracegraph"):
        raise UsageError(f"--kl-warmup scales the KL term of an ELBO; --objective {args.objective} has none")


def model_config(args, image_shape, binary):
    """The model settings ``run.json`` stores, from the command line and the data."""
    small = image_shape[-1] <= 8
    likelihood = args.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if binary else "gaussian"
    config = dict(model=args.model, image_shape=list(image_shape), z_dim=args.z_dim or (8 if small else 50),
                  network=args.network, hidden_dims=args.hidden or ([128] if small else [400]),
                  likelihood=likelihood, guide=args.guide, scale=args.scale)
    if getattr(args, "prior", None) is not None:  # conditional VAEs
        if not args.model.startswith("cvae"):
            raise UsageError(f"--prior applies to the conditional VAEs (cvae, cvae-quadrant), "
                             f"not --model {args.model}")
        config["prior"] = args.prior
    return config


def cmd_train(args):
    if getattr(args, "resume", None):  # continue a run: its options, checked against the given ones
        args = _resume_args(args)
    _validate_train_args(args)  # every option checked before anything is created
    timeout = getattr(args, "ddp_timeout", distributed.DEFAULT_TIMEOUT)
    device = distributed.init_from_env(args.device, timeout=timeout)  # under torchrun: join the process group
    out = Path(args.resume) if args.resume else Path(args.out or Path("runs") / args.dataset)
    # the run folder's lock, held until this process ends: one writer per folder; the
    # --overwrite check and the folder's writability are checked under it
    lock = _lock_for_training(out, args.overwrite, bool(args.resume))
    try:
        return _train(args, device, out, timeout)
    except BaseException:
        if lock is not None:  # a failed start leaves no folder behind
            lock.release(remove_created=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(args, device, out, timeout):
    train = load_dataset(args.dataset, "train", args.data, binarize=args.binarize, seed=args.seed,
                         download=args.download)
    valid = load_dataset(args.dataset, "valid", args.data, binarize=args.binarize, seed=args.seed,
                         download=args.download)
    binary = args.dataset == "binarized-mnist" or args.binarize in ("static", "dynamic")
    config = model_config(args, train.image_shape, binary)
    torch.manual_seed(args.seed)  # the initial weights follow --seed too (torch's own seed is random)
    model = build_model(config)
    conditional = hasattr(model, "prepare_data")  # a conditional VAE: batches (x, c)
    if conditional:
        train, valid = model.prepare_data(train), model.prepare_data(valid)
    if args.lr_schedule != "constant" and args.schedule_epochs is None:
        args.schedule_epochs = args.epochs  # stored resolved: a resume with more epochs keeps the schedule
    trainer = Trainer(model, train, valid, objective=args.objective, num_particles=args.particles, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, device=device, clip_norm=args.clip_norm,
                      with_labels=conditional, fused=args.fused, compile=args.compile,
                      lr_schedule=args.lr_schedule, schedule_epochs=args.schedule_epochs, lr_final=args.lr_final,
                      kl_warmup=args.kl_warmup, ema_decay=args.ema, keep_best=args.keep_best)
    run = dict(model=config, data=dict(dataset=args.dataset, binarize=args.binarize, seed=args.seed),
               train=dict(objective=args.objective, particles=args.particles, lr=args.lr,
                          batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, device=args.device,
                          clip_norm=args.clip_norm),
               num_data=len(train), options=_options(args), world_size=trainer.world_size)
    # checkpoint.pt + run.json every --checkpoint-every steps and at each epoch end, rank 0 only
    save = checkpoints.Checkpointer(out, every=args.checkpoint_every, run=run)
    if args.resume:
        _resume_trainer(trainer, out / checkpoints.CHECKPOINT)
        if args.epochs <= trainer.epoch:
            missing = missing_figures(model, out)
            if missing and trainer.epoch_step == 0:  # killed after its last checkpoint, before its figures
                if distributed.is_main():
                    model.eval()
                    write_figures(model, trainer.history.to_dict(), valid, out, only=missing)
                    print(f"--resume {out}: the run has already trained {trainer.epoch} epochs; wrote its "
                          f"missing figures {', '.join(missing)}")
                return 0
            raise UsageError(f"--resume {out}: the run has already trained {trainer.epoch} epochs; "
                             f"pass --epochs N with N > {trainer.epoch} to train further")
    main_rank = distributed.is_main()
    if main_rank:
        print(f"training a {config['model']} ({config['network']}, z_dim={config['z_dim']}, "
              f"{config['likelihood']} likelihood, {config['guide']} guide) on {args.dataset} "
              f"({len(train)} train / {len(valid)} valid) with {args.objective}, writing {out}"
              + (f"; resuming after step {trainer.step_count} (epoch {trainer.epoch + 1}, batch "
                 f"{trainer.epoch_step})" if args.resume else "")
              + (f"; {trainer.world_size} processes" if trainer.world_size > 1 else ""))
    try:
        history = trainer.run(args.epochs - trainer.epoch, progress=not args.no_progress,
                              callback=save.on_epoch, step_callback=save.on_step)
    except RuntimeError as e:  # under torchrun: a collective that timed out or lost a rank
        if not distributed.is_initialized() or isinstance(e, checkpoints.CheckpointError):
            raise
        raise distributed.DistributedError.explain(e, timeout, trainer.last_checkpoint) from None
    if not main_rank:  # rank 0 writes the figures
        return 0
    model.eval()
    write_figures(model, history.to_dict(), valid, out)
    print(f"epoch {trainer.epoch}: train {trainer.label} {history.train_loss[-1]:.3f}, "
          f"valid {trainer.label} {history.valid_loss[-1]:.3f} nats per data point; wrote {out}")
    return 0


def figure_names(model):
    """The figures ``pyro-vae train`` writes into a run folder for ``model``."""
    if hasattr(model, "prepare_data"):  # conditional VAE: one row per class, or completions
        second = "samples.png" if hasattr(model.condition, "num_classes") else "completions.png"
        return ["loss_curves.png", second]
    return ["loss_curves.png", "reconstructions.png", "samples.png"]


def missing_figures(model, out):
    """The figures of :func:`figure_names` that the run folder ``out`` lacks."""
    return [name for name in figure_names(model) if not (Path(out) / name).is_file()]


def write_figures(model, history, valid, out, only=None):
    """Write the run's figures into ``out`` (only those named in ``only``, if given)."""
    out = Path(out)
    shape = valid.image_shape
    x = valid.x[:32].to(next(model.parameters()).device)
    wanted = set(figure_names(model) if only is None else only)
    if "loss_curves.png" in wanted:
        plot_losses(history, out / "loss_curves.png")
    if hasattr(model, "prepare_data"):  # conditional VAE: one row per class, or completions
        if hasattr(model.condition, "num_classes"):
            if "samples.png" in wanted:
                save_class_samples(model, shape, out / "samples.png")
        elif "completions.png" in wanted:
            save_completions(model, x[:8], shape, out / "completions.png")
        return
    if "reconstructions.png" in wanted:
        save_reconstructions(model, x, shape, out / "reconstructions.png")
    if "samples.png" in wanted:
        save_samples(model, shape, out / "samples.png")


def _resume_trainer(trainer, path):
    """Load a run's checkpoint into ``trainer``: checked first (finite weights, a whole
    trainer state), so that a corrupt file is a one-line error, not a traceback or a
    run that starts from NaN."""
    state = checkpoints.check_trainer_state(checkpoints.load_checkpoint(path), path)
    try:
        trainer.load_state_dict(state)
    except checkpoints.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise checkpoints.CheckpointError(f"{path}: its trainer state cannot be restored "
                                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None
    trainer.last_checkpoint = (f"{path} (loaded to resume, step {trainer.step_count}"
                               + (f", epoch {trainer.epoch + 1} batch {trainer.epoch_step})" if trainer.epoch_step
                                  else f", end of epoch {trainer.epoch})"))


# ---- resume ------------------------------------------------------------------------------
#: Options that may differ from the run's when resuming; any other option given with
#: --resume must equal the value the run's run.json stores.
RESUME_MAY_CHANGE = ("epochs", "device", "no_progress", "checkpoint_every", "data", "download", "resume", "out",
                     "overwrite", "ddp_timeout")


def _options(args):
    """The train options as JSON values: what ``run.json`` stores to resume the run."""
    skip = {"func", "command", "argv", "resume", "out", "overwrite"}
    return {k: v for k, v in vars(args).items()
            if k not in skip and (v is None or isinstance(v, (bool, int, float, str, list)))}


def _given_options(args):
    """The names (``dest``) of the train options given on the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    argv = getattr(args, "argv", None)
    if argv is None:  # called without main(): options that differ from their defaults
        return {a.dest for a in parser._actions if getattr(args, a.dest, a.default) != a.default}
    argv = list(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv[argv.index("train") + 1:] if "train" in argv else argv)
    return set(vars(given))


def _check_stored_options(stored, path):
    """Check the options a ``run.json`` stores against the train options' own types
    and choices, so that a hand-edited or corrupt file is a one-line error.

    :raises checkpoints.CheckpointError: naming the file and the option."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    for key, value in stored.items():
        action = actions.get(key)
        if action is None:
            raise checkpoints.CheckpointError(f"{path}: options.{key} is not an option of pyro-vae train "
                                              "(the file is corrupt or from another version)")
        flag = action.option_strings[-1] if action.option_strings else key
        if value is None and action.default is None:
            continue
        if isinstance(action, argparse._StoreConstAction):  # store_true, store_false
            ok, what = isinstance(value, bool), "true or false"
        else:
            kind = action.type or str
            one = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                   float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                   str: lambda v: isinstance(v, str)}.get(kind, lambda v: True)
            what = {int: "an integer", float: "a number", str: "a string"}.get(kind, "a value")
            if action.nargs in ("+", "*"):
                ok, what = isinstance(value, list) and all(one(v) for v in value), f"a list of {what.split(' ', 1)[1]}s"
                ok = ok and (action.nargs == "*" or len(value) > 0)
            else:
                ok = one(value)
            if ok and action.choices is not None:
                values = value if isinstance(value, list) else [value]
                ok, what = all(v in action.choices for v in values), f"one of {', '.join(map(str, action.choices))}"
        if not ok:
            shown = json.dumps(value) if len(json.dumps(value)) <= 40 else type(value).__name__
            raise checkpoints.CheckpointError(f"{path}: options.{key} ({flag}) must be {what}, got {shown}")


def _resume_args(args):
    """The options of the run in ``args.resume``, with those that may change
    (:data:`RESUME_MAY_CHANGE`) taken from the command line.

    :raises UsageError: if the folder holds no run, or an option given on the command
        line differs from the run's, naming each.
    """
    run_dir = Path(args.resume)
    for name in (checkpoints.RUN_JSON, checkpoints.CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(f"--resume {run_dir}: there is no {name} there; is it a run folder written by "
                             "pyro-vae train?")
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise UsageError(f"--resume continues the run in its own folder {run_dir}; drop --out {args.out}")
    stored = checkpoints.load_json(run_dir / checkpoints.RUN_JSON).get("options")
    if stored is None:
        raise UsageError(f"--resume {run_dir}: its run.json stores no options (written by an older pyro-vae), "
                         "so the run cannot be resumed")
    _check_stored_options(stored, run_dir / checkpoints.RUN_JSON)
    given = _given_options(args)
    defaults = vars(build_parser().parse_args(["train"]))
    diffs = []
    for k in sorted(given - set(RESUME_MAY_CHANGE)):
        value = getattr(args, k)
        if stored.get(k, defaults.get(k)) != value:
            diffs.append(f"--{k.replace('_', '-')} {value!r} (the run has {stored.get(k, defaults.get(k))!r})")
    if diffs:
        raise UsageError(f"--resume {run_dir}: the given options differ from the run's (its run.json): "
                         f"{', '.join(diffs)}; drop them to continue the run as it was, or start a new run "
                         "with another --out")
    merged = dict(vars(args))
    for k, v in stored.items():
        if not (k in RESUME_MAY_CHANGE and k in given):
            merged[k] = v
    return argparse.Namespace(**merged)


# ---- sample ------------------------------------------------------------------------------
def cmd_sample(args):
    if args.n < 1:
        raise UsageError(f"-n must be a positive integer, got {args.n}")
    _check_device(args.device)
    model, run = load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    shape = tuple(run["model"]["image_shape"])
    out = Path(args.out or Path(args.run_dir) / "samples.png")
    if hasattr(getattr(model, "condition", None), "num_classes"):  # class-conditional VAE: n split over classes
        save_class_samples(model, shape, out, n=-(-args.n // model.condition.num_classes), mean=not args.draw)
    else:
        save_samples(model, shape, out, n=args.n, mean=not args.draw)
    print(f"wrote {args.n} samples to {out}")
    return 0


# ---- evaluate ----------------------------------------------------------------------------
def add_evaluate_arguments(p):
    p.add_argument("run_dir")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("-K", "--num-samples", type=int, default=5000,
                   help="importance samples per data point for log p(x) (default: 5000)")
    p.add_argument("--iwae-k", type=int, nargs="+", default=None, metavar="K",
                   help="K of the IWAE bounds L_K to report, each dividing -K (default: 5, 50 and the run's own K)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N data points")
    p.add_argument("--weights", default="best", choices=WEIGHTS,
                   help="best: the best validation epoch's, if the run kept them; last: the latest (the moving "
                        "average, if the run kept one); raw: the latest trained weights (default: best)")
    p.add_argument("--batch-size", type=int, default=100, help="data points per batch (default: 100)")
    p.add_argument("--chunk-size", type=int, default=100,
                   help="samples per chunk; memory grows as batch × chunk × x_dim (default: 100)")
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    p.add_argument("--out", default=None, help="JSON path (default: RUN_DIR/eval_<split>.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_evaluate(args):
    """−ELBO, −L_K and NLL = −log p̂(x) (importance sampling, K samples) with their standard
    errors, and the active units, on one split of the run's data set; printed and saved as JSON."""
    K = args.num_samples
    if K < 1:
        raise UsageError(f"-K must be a positive number of importance samples, got {K}")
    for name in ("batch_size", "chunk_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.iwae_k is not None:
        for k in args.iwae_k:
            if k < 1 or K % k:
                raise UsageError(f"--iwae-k {k}: each K must be a positive divisor of -K {K} (L_K is "
                                 f"estimated from the -K samples split into groups of K)")
    _check_device(args.device)
    model, run = load_run(args.run_dir, args.device, weights=args.weights)
    check_split(run.get("data", {}).get("dataset", "digits"), args.split)  # digits, mnist10k: no test split
    ks = args.iwae_k
    if ks is None:
        train_cfg = run.get("train", {})
        own = train_cfg.get("particles") if train_cfg.get("objective") in ("iwae", "IWAE", "IWAE_ELBO") else None
        ks = [k for k in (5, 50, own) if k and k > 1 and K % k == 0]
    ks = sorted(set(ks) - {1})
    data_cfg = run.get("data", {})
    binarize = "static" if data_cfg.get("binarize") == "dynamic" else data_cfg.get("binarize")
    data = load_dataset(data_cfg.get("dataset", "digits"), args.split, args.data, binarize=binarize,
                        seed=data_cfg.get("seed", 0))
    if args.limit is not None:
        data.x = data.x[: args.limit]
        data.y = data.y[: args.limit] if data.y is not None else None
    conditional = hasattr(model, "prepare_data")  # a conditional VAE takes (x, c), as in training
    if conditional:
        data = model.prepare_data(data)
    extra = (data.y,) if conditional else ()
    pyro.set_rng_seed(args.seed)
    report = likelihood_report(model, data.x, *extra, num_samples=K, ks=ks, batch_size=args.batch_size,
                               chunk_size=args.chunk_size, progress=not args.no_progress)
    result = dict(run_dir=str(args.run_dir), dataset=data_cfg.get("dataset"), split=args.split,
                  weights=args.weights, **report)
    print(f"{data.name}: {report['n']} data points, K={K} importance samples, {report['seconds']:.1f} s; "
          "nats per data point, ± standard error over the data points")
    print(f"  {'-ELBO':16s}{report['neg_elbo']:9.3f} ± {report['neg_elbo_stderr']:.3f}")
    for k in ks:
        print(f"  {f'-L_{k}':16s}{report['neg_iwae'][str(k)]:9.3f} ± {report['neg_iwae_stderr'][str(k)]:.3f}")
    print(f"  {f'NLL (K={K})':16s}{report['nll']:9.3f} ± {report['nll_stderr']:.3f}  "
          f"(Monte Carlo part ± {report['nll_mc_stderr']:.3f}; median ESS {report['median_ess']:.0f})")
    print(f"  {'active units':16s}{report['active_units']:>9d} of {report['latent_units']}")
    out = Path(args.out or Path(args.run_dir) / f"eval_{args.split}.json")
    checkpoints.save_json(out, result)
    print(f"wrote {out}")
    return 0


# ---- plot --------------------------------------------------------------------------------
#: The labelled data a run's latent map and classifier use, by the run's data set:
#: binarized MNIST has no labels, so the labelled MNIST test images (mnist10k) stand in.
LABELLED_DATA = {"binarized-mnist": "mnist10k"}


def add_plot_arguments(p):
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders, e.g. an autoencoder's and a VAE's: drawn side by side")
    p.add_argument("--out", default=None, help="folder for the figures (default: RUN_DIR/plots of the first run)")
    p.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    p.add_argument("-n", type=int, default=64, help="samples per model (default: 64)")
    p.add_argument("--grid", type=int, default=15, help="side of the decoded manifold's grid (default: 15)")
    p.add_argument("--steps", type=int, default=10, help="decoded images per interpolation (default: 10)")
    p.add_argument("--draws", type=int, default=2000, help="N(0, I) draws for the dead-zone numbers (default: 2000)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N test images")
    p.add_argument("--classifier-epochs", type=int, default=10,
                   help="epochs of the independent classifier, trained once and kept in OUT/classifier.pt")
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier's confidence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _plot_test_data(run, root, limit):
    """Labelled test images for a run: its data set's validation split, binarized as in
    training; for binarized MNIST the labelled MNIST test images (``mnist10k``)."""
    cfg = run.get("data", {})
    dataset = cfg.get("dataset", "digits")
    labelled = LABELLED_DATA.get(dataset, dataset)
    binary = dataset == "binarized-mnist" or cfg.get("binarize") in ("static", "dynamic")
    try:
        data = load_dataset(labelled, "valid", root, binarize="static" if binary else None, seed=cfg.get("seed", 0))
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
        state = checkpoints.load_checkpoint(path)
        if state.get("meta") == meta:
            clf = DigitClassifier(train.image_shape, train.num_classes)
            checkpoints.load_state_dict(clf, state["model"], what="classifier")
            clf = clf.to(device).eval()
            print(f"classifier: {path} ({labelled}), valid accuracy {classifier_accuracy(clf, valid.x, valid.y):.3f}")
            return clf
    clf = train_classifier(train, epochs=epochs, seed=seed, device=device, progress=True)
    checkpoints.save_checkpoint(path, dict(model=clf.state_dict(), meta=meta))
    print(f"classifier: trained on {train.name} ({len(train)} images, {epochs} epochs), valid accuracy "
          f"{classifier_accuracy(clf, valid.x, valid.y):.3f}; saved {path}")
    return clf


def _write_missing_run_figures(model, run, run_dir, root):
    """Write the training figures (:func:`write_figures`) a run folder lacks, e.g.
    after a kill between the last checkpoint and the figures. Skipped, with a note,
    while another process writes the folder."""
    missing = missing_figures(model, run_dir)
    epochs = run.get("train", {}).get("epochs")
    if not missing or (epochs is not None and run.get("epoch", epochs) < epochs):  # finished runs only
        return []
    try:
        lock = checkpoints.RunLock(run_dir).acquire()
    except checkpoints.CheckpointError as e:
        print(f"note: not writing the missing figures of {run_dir} ({e})")
        return []
    try:
        cfg = run.get("data", {})
        binarize = "static" if cfg.get("binarize") == "dynamic" else cfg.get("binarize")
        valid = load_dataset(cfg.get("dataset", "digits"), "valid", root or run.get("options", {}).get("data"),
                             binarize=binarize, seed=cfg.get("seed", 0))
        if hasattr(model, "prepare_data"):
            valid = model.prepare_data(valid)
        write_figures(model, run.get("history", {}), valid, run_dir, only=missing)
    finally:
        lock.release()
    print(f"wrote the missing figures of {run_dir}: {', '.join(missing)}")
    return missing


def cmd_plot(args):
    """Figures of one or more saved runs, without retraining: latent maps side by side,
    decoded manifolds, samples, reconstructions, interpolations, and the dead-zone numbers."""
    for name in ("n", "grid", "draws", "classifier_epochs", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.steps < 2:
        raise UsageError(f"--steps must be at least 2, got {args.steps}")
    _check_device(args.device)
    loaded, names = [], []
    for run_dir in args.run_dirs:
        model, run = load_run(run_dir, args.device)
        _write_missing_run_figures(model, run, run_dir, args.data)
        if hasattr(model, "prepare_data"):
            raise UsageError(f"{run_dir} holds a conditional model ({run['model'].get('model')}); pyro-vae plot "
                             "draws the latent space of unconditional models (vae, ae)")
        name = Path(run_dir).resolve().name
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
        loaded.append((model, run))
    datasets = {run.get("data", {}).get("dataset") for _, run in loaded}
    shapes = {tuple(run["model"]["image_shape"]) for _, run in loaded}
    if len(datasets) > 1 or len(shapes) > 1:
        raise UsageError(f"the runs were trained on different data ({', '.join(map(str, sorted(datasets)))}); "
                         "compare runs of the same data set")
    shape = shapes.pop()
    out = Path(args.out or Path(args.run_dirs[0]) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    data, labelled = _plot_test_data(loaded[0][1], args.data, args.limit)
    clf = None
    if labelled and not args.no_classifier:
        clf = _plot_classifier(labelled, args.data, out, args.classifier_epochs, args.seed, args.device)
    x = data.x.to(args.device)
    panels, manifolds, samples, reports = [], {}, {}, []
    for name, (model, run), run_dir in zip(names, loaded, args.run_dirs):
        title = f"{name} ({type(model).__name__}, z_dim={model.z_dim})"
        torch.manual_seed(args.seed)
        samples[title] = model.sample(args.n).cpu()
        plots.save_grid(samples[title], shape, out / f"{name}_samples.png", nrow=int(math.sqrt(args.n)) or 1)
        plots.save_reconstructions(model, x[:32], shape, out / f"{name}_reconstructions.png")
        k = min(6, len(x) // 2)
        plots.save_interpolations(model, x[:k], x[k:2 * k], shape, out / f"{name}_interpolations.png", args.steps)
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
        written.append(plots.plot_image_grids(manifolds, shape, out / "manifolds.png", nrow=args.grid,
                                              suptitle="decoded at Gaussian quantiles of each model's frame"))
    written.append(plots.plot_image_grids(samples, shape, out / "samples.png",
                                          suptitle="decoded z ~ N(0, I)"))
    table = evaluation.dead_zone_table(reports, names)
    checkpoints.save_json(out / "dead_zones.json", dict(zip(names, reports)))
    (out / "dead_zones.md").write_text(table + "\n")
    print(f"test images: {data.name}, {len(x)}; {args.draws} draws u ~ N(0, I) in each model's frame")
    print(table)
    print(f"wrote {len(list(out.glob('*.png')))} figures and dead_zones.json/.md to {out}")
    return 0


# ---- gradvar -----------------------------------------------------------------------------
def add_gradvar_arguments(p):
    p.add_argument("--part", default="all", choices=["all", "toy", "vae"],
                   help="the toy of Example 1.5 (Figure 6), the VAE contrast, or both")
    p.add_argument("--out", default="runs/gradvar", help="output folder (tables, CSV, JSON, PNG)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = p.add_argument_group("toy: f(x) = x², q(x) = N(φ, 1)")
    t.add_argument("--phis", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="values of φ")
    t.add_argument("--sizes", type=int, nargs="+", default=list(gradvar.SAMPLE_SIZES), help="sample sizes N")
    t.add_argument("--repeats", type=int, default=300, help="repetitions R per (route, φ, N)")
    v = p.add_argument_group("VAE")
    v.add_argument("--dataset", default="binarized-mnist", choices=DATASETS)
    v.add_argument("--data", default=None, help="data folder (default: $PYRO_VAE_DATA or ./data)")
    v.add_argument("--train-size", type=int, default=10000, help="first N training images")
    v.add_argument("--valid-size", type=int, default=1000, help="first N validation images")
    v.add_argument("--z-dim", type=int, default=None, help="latent dimension (default: 50, or 8 for digits)")
    v.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP hidden sizes (default: 400, or 128)")
    v.add_argument("--steps", type=int, default=1000, help="SVI steps of every −ELBO curve")
    v.add_argument("--batch-size", type=int, default=100)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--eval-every", type=int, default=50, help="validation −ELBO every N steps")
    v.add_argument("--grad-repeats", type=int, default=200, help="gradient estimates per route for the variance")
    v.add_argument("--settle-steps", type=int, default=200, help="steps that settle a baseline before measuring")


def cmd_gradvar(args):
    positive = ["repeats", "train_size", "valid_size", "steps", "batch_size", "eval_every", "grad_repeats"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.repeats < 4 or args.grad_repeats < 2:
        raise UsageError("--repeats must be at least 4 and --grad-repeats at least 2 to estimate variances")
    if any(n < 1 for n in args.sizes):
        raise UsageError(f"--sizes must be positive integers, got {args.sizes}")
    if args.settle_steps < 0 or not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError("--settle-steps must be ≥ 0 and --lr a positive number")
    if args.train_size < args.batch_size:
        raise UsageError(f"--train-size {args.train_size} is smaller than --batch-size {args.batch_size}")
    out = _check_out_dir(args.out, args.overwrite)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "argv")}
    progress = not args.no_progress
    if args.part in ("all", "toy"):
        rows = gradvar.measure_toy(args.phis, args.sizes, args.repeats, seed=args.seed, progress=progress)
        print(gradvar.toy_table(rows))
        gradvar.write_toy_outputs(rows, out)
        checkpoints.save_json(out / "toy_variance.json", dict(settings=settings, rows=rows))
    if args.part in ("all", "vae"):
        binarize = None if args.dataset == "binarized-mnist" else "static"
        train = load_dataset(args.dataset, "train", args.data, binarize=binarize, seed=args.seed)
        valid = load_dataset(args.dataset, "valid", args.data, binarize=binarize, seed=args.seed)
        train.x, valid.x = train.x[:args.train_size], valid.x[:args.valid_size]
        small = train.image_shape[-1] <= 8
        torch.manual_seed(args.seed)
        vae = build_model(dict(model="vae", image_shape=list(train.image_shape),
                               z_dim=args.z_dim or (8 if small else 50),
                               hidden_dims=args.hidden or ([128] if small else [400])))
        x = valid.x[:args.batch_size]
        print(f"VAE on {args.dataset}: {len(train)} train / {len(valid)} valid images, {args.steps} steps per route, "
              f"gradient variance over {args.grad_repeats} estimates on a batch of {len(x)}")
        result = gradvar.vae_contrast(vae, train, valid, x, args.steps, args.batch_size, args.lr, args.eval_every,
                                      args.grad_repeats, args.settle_steps, seed=args.seed, progress=progress)
        print(gradvar.write_vae_outputs(result, out))
        checkpoints.save_json(out / "vae_gradient_variance.json", dict(settings=settings, **{
            k: v for k, v in result.items() if k != "curves"}))
    print(f"wrote {out}")
    return 0


# ---- posterior: NUTS against the guide for one data point --------------------------------
def add_posterior_arguments(p):
    p.add_argument("run_dir")
    p.add_argument("--index", type=int, default=17, help="which data point of the split (default: 17)")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"], help="data split (default: valid)")
    p.add_argument("--data", default=None, help="data folder (default: the run's, or $PYRO_VAE_DATA)")
    p.add_argument("--num-samples", type=int, default=500, help="NUTS draws per chain (default: 500)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warm-up steps per chain (default: 500)")
    p.add_argument("--chains", type=int, default=2, help="NUTS chains, run one after another (default: 2)")
    p.add_argument("--is-samples", type=int, default=5000,
                   help="draws of q(z|x) for the importance weights and Pareto k̂ (default: 5000)")
    p.add_argument("--dims", type=int, nargs="+", default=None,
                   help="latent coordinates of the pair plot (default: the 4 narrowest under NUTS)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-jit", action="store_true", help="do not JIT-compile the potential energy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_posterior(args):
    from .eval import posterior  # here, not at the top: ArviZ takes seconds to import

    for name in ("num_samples", "warmup", "chains", "is_samples"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    model, run = load_run(args.run_dir)
    check_split(run["data"]["dataset"], args.split)  # digits, mnist10k: no test split
    kind = run["model"].get("model", "vae")
    if kind != "vae":
        raise UsageError(f"pyro-vae posterior compares a VAE's guide with NUTS; this run holds a {kind!r} model "
                         "(the autoencoder's point mass has no density, conditional models are not supported here)")
    data_info = run["data"]
    data = load_dataset(data_info["dataset"], args.split, args.data or run.get("options", {}).get("data"),
                        binarize=data_info.get("binarize"), seed=data_info.get("seed", 0))
    if not 0 <= args.index < len(data):
        raise UsageError(f"--index {args.index} is out of range: the {args.split} split of "
                         f"{data_info['dataset']} has {len(data)} points")
    x = data.x[args.index]
    idata = posterior.nuts_posterior(model, x, num_samples=args.num_samples, warmup_steps=args.warmup,
                                     num_chains=args.chains, seed=args.seed, jit_compile=not args.no_jit,
                                     progress=not args.no_progress)
    result = posterior.compare_to_nuts(model, x, idata, num_samples=args.is_samples)
    guide = run["model"].get("guide", "diagonal")
    out = Path(args.out or args.run_dir)
    png = posterior.plot_posterior_pairs(
        idata, {guide: posterior.guide_draws(model, x, num_samples=1000)}, out / f"posterior_{args.index}.png",
        dims=args.dims, title=f"{data_info['dataset']} {args.split}[{args.index}]: NUTS vs the {guide} guide "
                              f"(k̂ = {result['khat']:.2f})")
    result.update(index=args.index, split=args.split, guide=guide, figure=png.name)
    checkpoints.save_json(out / f"posterior_{args.index}.json", result)
    print(f"{args.split}[{args.index}], {guide} guide: Pareto k̂ = {result['khat']:.3f} "
          f"({'reliable' if result['khat'] < posterior.KHAT_THRESHOLD else 'NOT reliable'}: k̂ < 0.7 needed); "
          f"log p(x) = {result['log_px']:.2f} ± {result['log_px_stderr']:.2f}, ELBO = {result['elbo']:.2f}, "
          f"KL(q‖p) = {result['kl_q_p']:.2f}, KL(p‖q) = {result['kl_p_q']:.2f} nats; NUTS: R-hat ≤ "
          f"{result['max_rhat']:.3f}, ESS ≥ {result['min_ess_bulk']:.0f}, {result['divergences']} divergences")
    print(f"wrote {png} and {out / f'posterior_{args.index}.json'}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders the Pyro way.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model; writes a run folder")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", help="write samples of a trained run as a PNG grid")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/samples.png)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("evaluate", help="NLL by importance sampling, -ELBO, IWAE bounds, active units (JSON)")
    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("plot", help="latent maps, manifolds, samples, reconstructions, interpolations and "
                                    "dead-zone numbers of saved runs (PNG, JSON)")
    add_plot_arguments(p)
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("gradvar", help="score-function vs reparameterized gradients: variances, Figure 6, "
                                       "VAE -ELBO curves")
    add_gradvar_arguments(p)
    p.set_defaults(func=cmd_gradvar)
    p = sub.add_parser("posterior", help="NUTS on p(z|x) of a trained VAE against its guide for one data point: "
                                         "pair plot, Pareto k̂, divergences")
    add_posterior_arguments(p)
    p.set_defaults(func=cmd_posterior)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (train --resume)
    try:
        return args.func(args)
    except (UsageError, DataError, checkpoints.CheckpointError, NonFiniteLossError, ValueError,
            distributed.DistributedError) as e:
        # one write, newline included: the lines of several ranks (torchrun) do not merge
        sys.stderr.write(f"pyro-vae {args.command}: error: {e}\n")
        sys.stderr.flush()
        return 2


if __name__ == "__main__":
    sys.exit(main())
