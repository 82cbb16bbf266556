"""``pyro-vae train``: train a model on a data set and write its run folder."""

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

import torch

from .. import runs
from ..config import DataConfig, TrainConfig
from ..data import DATASETS
from ..guides import GUIDES
from ..models import MODEL_BUILDERS, build_model
from ..models.build import check_m1
from ..models.ssvae import ALPHA as SSVAE_ALPHA
from ..models.ssvae import ssvae_objective
from ..objectives import ALIASES, OBJECTIVES
from ..priors import PSEUDO_INPUTS
from ..runs.files import check_config, load_weights
from ..runs.resume import for_model, load_splits, make_trainer, restore
from ..runs.schema import record
from ..train import LR_SCHEDULES, checkpoints, distributed
from ..train.trainer import OPTIMIZERS
from .common import (
    UsageError,
    check_device,
    decay,
    gaussian_scale,
    lock_run_dir,
    nonnegative_float,
    positive_float,
    positive_int,
    probability,
)
from .figures import missing_figures, write_figures
from .resume import read_run_dir, resume_args


def add_arguments(p):
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (digits needs no download)")
    d.add_argument("--data", default=None, help="data folder; if not given: $PYRO_VAE_DATA, else ./data")
    d.add_argument("--download", action="store_true", help="download missing data files (needs network)")
    d.add_argument(
        "--binarize",
        default=None,
        choices=["static", "dynamic", "none"],
        help="binarize grey levels for a Bernoulli likelihood: one fixed draw (static), a new draw "
        "per epoch (dynamic), or not at all (none, as None)",
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vae", choices=sorted(MODEL_BUILDERS), help="model kind")
    m.add_argument(
        "--likelihood",
        default="auto",
        choices=["auto", "bernoulli", "gaussian"],
        help="p(x|z); auto: bernoulli for binary data, gaussian otherwise",
    )
    m.add_argument(
        "--scale",
        type=gaussian_scale,
        default=None,
        metavar="{SCALE,learned}",
        help="the Gaussian likelihood's scale: fixed, or learned per pixel; if not given: 0.25 for "
        "digits (on its pixels that are always 0 a learned scale shrinks without bound), "
        "else learned",
    )
    m.add_argument(
        "--network",
        default="mlp",
        choices=["mlp", "conv", "gated"],
        help="encoder and decoder networks (gated: MLPs of gated dense layers, --model hvae)",
    )
    m.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        default=None,
        help="hidden layer sizes of the MLP; if not given: 400, or 128 for 8×8 digits",
    )
    m.add_argument(
        "--z-dim", type=positive_int, default=None, help="latent dimension; if not given: 50, or 8 for digits"
    )
    m.add_argument("--guide", default="diagonal", choices=sorted(GUIDES), help="guide family q(z|x)")
    m.add_argument(
        "--prior",
        default=None,
        choices=["fixed", "learned", "vamp"],
        help="p(z) = N(0, I) (fixed); for the VAE also vamp, the VampPrior; for the conditional VAEs "
        "also learned, a prior network p(z|c); if not given: learned for cvae-quadrant, else fixed",
    )
    m.add_argument(
        "--pseudo-inputs",
        type=positive_int,
        default=None,
        metavar="K",
        help=f"the VampPrior's pseudo-inputs (--prior vamp); if not given: {PSEUDO_INPUTS}",
    )
    m.add_argument(
        "--dropout",
        type=probability,
        default=None,
        metavar="P",
        help="--model hvae: dropout of probability P after each hidden layer of the decoder p(x | z1, z2) "
        "while training (validation and evaluation use the whole network); if not given: 0, none",
    )
    s = p.add_argument_group("semi-supervised (--model ssvae, or m1m2: M2 on the features of a VAE M1)")
    s.add_argument(
        "--labels",
        type=positive_int,
        default=None,
        metavar="N",
        help="--model ssvae or m1m2: keep N training labels, balanced per class (the rest unlabelled)",
    )
    s.add_argument(
        "--m1",
        default=None,
        metavar="RUN_DIR",
        help="--model m1m2: the VAE run (M1, prior N(0, I), same images) whose guide means, standardized, "
        "are M2's data; its best epoch's weights, kept fixed",
    )
    s.add_argument("--label-seed", type=int, default=0, help="--model ssvae: seed of the choice of the N labels")
    s.add_argument(
        "--alpha",
        type=nonnegative_float,
        default=None,
        help=f"--model ssvae: weight α per labelled point of log q(y|x); if not given: {SSVAE_ALPHA:g}",
    )
    s.add_argument(
        "--labelled-every",
        type=positive_int,
        default=1,
        metavar="K",
        help="--model ssvae: one labelled batch after every K unlabelled ones",
    )
    s.add_argument(
        "--unlabelled",
        default=None,
        choices=DATASETS,
        metavar="DATASET",
        help="--model ssvae or m1m2: add this other data set's training images, without labels, to the "
        "unlabelled points (same image shape; its images must not hold --dataset's validation images)",
    )
    o = p.add_argument_group("optimization")
    o.add_argument("--objective", default="elbo", help=f"objective: {', '.join(sorted(OBJECTIVES))}")
    o.add_argument("--particles", type=positive_int, default=1, help="L, particles per data point")
    o.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="adam",
        help="torch.optim's Adam, AdamW (decoupled weight decay) or SGD",
    )
    o.add_argument("--lr", type=positive_float, default=1e-3, help="the optimizer's learning rate")
    o.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        default=0.0,
        metavar="λ",
        help="the optimizer's weight decay: λθ added to the gradient (adam, sgd), or θ shrunk by lr·λ per step (adamw)",
    )
    o.add_argument("--batch-size", type=positive_int, default=128, help="data points per step")
    o.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="passes over the training data; if not given: 300 for digits (about 20 s), else 30",
    )
    o.add_argument("--seed", type=int, default=0, help="seed of every random source")
    o.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:N for GPU N)")
    o.add_argument("--clip-norm", type=positive_float, default=None, help="clip the gradient norm to this value")
    o.add_argument(
        "--lr-schedule",
        default="constant",
        choices=LR_SCHEDULES,
        help="learning rate per epoch: constant, or cosine/exponential from --lr to --lr-final over --schedule-epochs",
    )
    o.add_argument(
        "--lr-final", type=positive_float, default=None, help="learning rate at the schedule's end; if not given: lr/10"
    )
    o.add_argument(
        "--schedule-epochs",
        type=positive_int,
        default=None,
        metavar="T",
        help="epochs over which the schedule reaches --lr-final; if not given: --epochs",
    )
    o.add_argument(
        "--kl-warmup",
        type=nonnegative_float,
        default=0.0,
        metavar="EPOCHS",
        help="raise the KL term's weight β linearly from 0 to 1 over this many epochs (0: off)",
    )
    o.add_argument(
        "--ema",
        type=decay,
        default=None,
        metavar="DECAY",
        help="validate and keep an exponential moving average of the weights with this decay, "
        "e.g. 0.999; if not given: off",
    )
    o.add_argument(
        "--no-keep-best",
        dest="keep_best",
        action="store_false",
        help="do not keep the weights of the best validation epoch (evaluate uses them when kept)",
    )
    o.add_argument(
        "--fused",
        action="store_true",
        help="the optimizer's fused step, one kernel for all parameters (faster; see docs/speed.md)",
    )
    o.add_argument(
        "--flush-denormal",
        action="store_true",
        help="count subnormal floats as 0 while training and validating (faster for ssvae and m1m2 "
        "on x86 CPUs once their classifier is confident; on the main thread only, so fullest with "
        "OMP_NUM_THREADS=1; see docs/speed.md)",
    )
    o.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoder and decoder networks (slower for the MLP on CPU; see docs/speed.md)",
    )
    o.add_argument(
        "--traced",
        action="store_true",
        help="trace Trace_ELBO's step once per batch shape and replay it compiled (--objective elbo, "
        "reparameterized guides; compiles for seconds first; see docs/speed.md)",
    )
    o.add_argument(
        "--ddp-timeout",
        type=positive_float,
        default=distributed.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others in a collective before it stops with an error",
    )
    r = p.add_argument_group("output")
    r.add_argument("--out", default=None, help="run folder; if not given: runs/<dataset>")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        metavar="N",
        help="save a checkpoint every N steps as well as at each epoch end",
    )
    r.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (options default to the run's)",
    )
    r.add_argument(
        "--init",
        default=None,
        metavar="RUN_DIR",
        help="start from the weights of the run in RUN_DIR (those evaluate uses: its best epoch's, when kept) "
        "and train them with this command's settings; the model's settings must equal that run's",
    )


def _validate_train_args(args):
    """The checks that involve more than one option, or the machine (argparse's types
    check each option's own value)."""
    key = ALIASES.get(args.objective, args.objective)
    if key not in OBJECTIVES:
        raise UsageError(f"unknown --objective {args.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    check_device(args.device)
    _validate_ssvae_args(args)
    if getattr(args, "dropout", None) and args.model != "hvae":
        raise UsageError(f"--dropout is an option of --model hvae, not --model {args.model}")
    if args.kl_warmup and key not in ("elbo", "meanfield", "tracegraph"):
        raise UsageError(f"--kl-warmup scales the KL term of an ELBO; --objective {args.objective} has none")
    if getattr(args, "traced", False):
        if key != "elbo":
            raise UsageError(f"--traced replays Trace_ELBO's step (--objective elbo), not --objective {args.objective}")
        for flag, on in (("--kl-warmup", args.kl_warmup), ("--compile", args.compile)):
            if on:
                raise UsageError(f"--traced does not combine with {flag}")


#: The models whose labels are observed where given and enumerated elsewhere (--labels N).
SEMI_SUPERVISED = ("ssvae", "m1m2")


def _validate_ssvae_args(args):
    """--labels and --alpha go with --model ssvae or m1m2 alone, --m1 with m1m2 (a VAE run there);
    the options that do not apply to an enumerated label refuse in one line."""
    model = getattr(args, "model", None)
    if getattr(args, "m1", None) is not None and model != "m1m2":
        raise UsageError(f"--m1 is an option of --model m1m2, not --model {model}")
    if model not in SEMI_SUPERVISED:
        for flag, dest in (("--labels", "labels"), ("--alpha", "alpha"), ("--unlabelled", "unlabelled")):
            if getattr(args, dest, None) is not None:
                raise UsageError(f"{flag} is an option of --model ssvae or m1m2, not --model {model}")
        return
    if model == "m1m2" and getattr(args, "m1", None) is None and getattr(args, "m1_config", None) is None:
        raise UsageError("--model m1m2 needs --m1 RUN_DIR, the trained VAE whose features M2 models")
    if getattr(args, "m1", None) is not None:
        m1 = read_run_dir(args.m1, "--m1").get("model", {})
        try:
            check_m1(m1)
        except ValueError as e:
            raise UsageError(f"--m1 {args.m1}: {e}") from None
    if getattr(args, "labels", None) is None:
        raise UsageError(f"--model {model} needs --labels N, the number of training labels to keep")
    if getattr(args, "unlabelled", None) is not None and args.unlabelled == args.dataset:
        raise UsageError(
            f"--unlabelled {args.unlabelled} is --dataset itself, whose unlabelled points are used already"
        )
    try:
        ssvae_objective(args.objective, args.particles)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for flag, on in (("--traced", getattr(args, "traced", False)), ("--kl-warmup", args.kl_warmup)):
        if on:
            raise UsageError(f"{flag} does not apply to --model {model} (its label y is enumerated by TraceEnum_ELBO)")


#: ``pyro-vae train``'s defaults for the digits data set (8×8, 17 grey levels): the
#: Gaussian scale (a learned one shrinks without bound on the pixels that are always 0)
#: and the epochs after which the validation −ELBO has flattened.
DIGITS_SCALE, DIGITS_EPOCHS, EPOCHS = 0.25, 300, 30


def resolve_defaults(args):
    """Fill in the options whose default depends on the data set (``--epochs``, and
    ``--scale`` of a Gaussian likelihood on digits), so that ``run.json`` stores the
    values the run used (``--scale learned`` is stored as None, a learned scale)."""
    digits = args.dataset == "digits"
    if args.epochs is None:
        args.epochs = DIGITS_EPOCHS if digits else EPOCHS
    gaussian = args.likelihood == "gaussian" or (
        args.likelihood == "auto" and not DataConfig(dataset=args.dataset, binarize=args.binarize).binary
    )
    if args.scale == "learned":
        args.scale = None
    elif args.scale is None and digits and gaussian and args.model != "m1m2":  # M1+M2: M2 models features
        args.scale = DIGITS_SCALE


def model_config(args, image_shape, binary):
    """The model settings ``run.json`` stores, from the command line and the data."""
    small = image_shape[-1] <= 8
    likelihood = args.likelihood
    if likelihood == "auto":  # M1+M2: M2 models real-valued features
        likelihood = "bernoulli" if binary and args.model != "m1m2" else "gaussian"
    hvae = args.model == "hvae"  # two layers of 40 latents, MLPs of 300-300 (the VampPrior paper's sizes)
    config = dict(
        model=args.model,
        image_shape=list(image_shape),
        z_dim=args.z_dim or (8 if small else 40 if hvae else 50),
        network=args.network,
        hidden_dims=args.hidden or ([128] if small else [300, 300] if hvae else [400]),
        likelihood=likelihood,
        guide=args.guide,
        scale=args.scale,
    )
    if args.model in SEMI_SUPERVISED:
        config["alpha"] = SSVAE_ALPHA if getattr(args, "alpha", None) is None else args.alpha
    if args.model == "m1m2":  # M2's settings, and M1's from its run folder (or, resuming, from run.json)
        m1 = getattr(args, "m1", None)
        config["m1"] = read_run_dir(m1, "--m1")["model"] if m1 is not None else args.m1_config
    prior, k = getattr(args, "prior", None), getattr(args, "pseudo_inputs", None)
    if k is not None and prior != "vamp":
        raise UsageError("--pseudo-inputs is the VampPrior's K: it needs --prior vamp")
    if prior is not None:
        allowed = {
            "vae": ("fixed", "vamp"),
            "hvae": ("fixed", "vamp"),
            "cvae": ("fixed", "learned"),
            "cvae-quadrant": ("fixed", "learned"),
        }
        if prior not in allowed.get(args.model, ()):
            choices = allowed.get(args.model)
            raise UsageError(
                f"--prior {prior} does not apply to --model {args.model}"
                + (
                    f" (choose {' or '.join(choices)})"
                    if choices
                    else f" (--model {args.model} takes no --prior: p(z) = N(0, I))"
                )
            )
        if prior != "fixed" or args.model.startswith("cvae"):
            config["prior"] = prior
        if prior == "vamp":
            config["pseudo_inputs"] = k if k is not None else PSEUDO_INPUTS
    dropout = getattr(args, "dropout", None)
    if dropout:
        config["dropout"] = dropout
    return config


def _lock_for_training(out, overwrite, resume):
    """:func:`lock_run_dir` on rank 0 (the writer); under torchrun every rank learns
    whether rank 0 could start, so that none waits for a rank that has stopped."""
    lock, error = None, None
    if distributed.is_main():
        try:
            lock = lock_run_dir(out, overwrite, resume)
        except (UsageError, runs.CheckpointError) as e:
            error = e
    if distributed.is_initialized():
        first = distributed.all_gather_object(None if error is None else str(error))[0]
        if first is not None and error is None:
            raise UsageError(f"rank {distributed.rank()}: rank 0 could not start ({first})")
    if error is not None:
        raise error
    return lock


def run(args):
    if getattr(args, "resume", None) and getattr(args, "init", None):
        raise UsageError("--init starts a new run from another run's weights; --resume continues one: give one of them")
    if getattr(args, "resume", None):  # continue a run: its options, checked against the given ones
        args = resume_args(args, add_arguments, settings_of)
    else:
        resolve_defaults(args)
    _validate_train_args(args)  # every option checked before anything is created
    timeout = getattr(args, "ddp_timeout", distributed.DEFAULT_TIMEOUT)
    device = distributed.init_from_env(args.device, timeout=timeout)  # under torchrun: join the process group
    out = Path(args.resume) if args.resume else Path(args.out or Path("runs") / args.dataset)
    # the run folder's lock, held until this process ends: one writer per folder; the
    # --overwrite check and the folder's writability are checked under it
    lock = _lock_for_training(out, args.overwrite, bool(args.resume))
    try:
        with _sigterm_raises():
            return _train(args, device, out, timeout)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what the last checkpoint holds, and how to go on
        if lock is not None:  # stopped before its first checkpoint: no folder left behind
            lock.release(remove_created=True)
        return _interrupted(e, out)
    except BaseException:
        if lock is not None:  # a failed start leaves no folder behind
            lock.release(remove_created=True)
        raise
    finally:
        if lock is not None:
            lock.release()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, as SIGINT raises :class:`KeyboardInterrupt`."""

    signal = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_raises():
    """Within: SIGTERM raises :class:`Terminated` (in the main thread; elsewhere no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(error, out):
    """One line on stderr: the signal, what ``out``'s last checkpoint holds and the command
    that continues it. Returns the shell's code for the signal: 128 + 2 (SIGINT) or
    128 + 15 (SIGTERM)."""
    sig = getattr(error, "signal", signal.SIGINT)
    if distributed.is_main():
        try:
            run = json.loads((out / runs.RUN_JSON).read_text())
        except (OSError, ValueError):
            run = None
        if run is not None and (out / runs.CHECKPOINT).exists():
            step = run.get("step")
            held = f"its last checkpoint holds {run.get('epoch')} complete epochs" + (
                f" (step {step})" if step is not None else ""
            )
            line = f"{held}; continue with: pyro-vae train --resume {out}"
        else:
            line = "no checkpoint was saved yet: nothing to resume"
        sys.stderr.write(f"pyro-vae train: stopped by {signal.Signals(sig).name}; {line}\n")
        sys.stderr.flush()
    return 128 + int(sig)


def data_config(args):
    """The data settings (:class:`~pyro_vae.config.DataConfig`) the options give."""
    ssvae = args.model in SEMI_SUPERVISED
    return DataConfig(
        dataset=args.dataset,
        binarize=args.binarize,
        seed=args.seed,
        labels=args.labels if ssvae else None,
        label_seed=args.label_seed if ssvae else 0,
        labelled_every=args.labelled_every if ssvae else 1,
        unlabelled=getattr(args, "unlabelled", None) if ssvae else None,
        root=args.data,
    )


def train_config(args):
    """The trainer's settings (:class:`~pyro_vae.config.TrainConfig`) the options give, the
    schedule's length resolved (so that a resume to more epochs keeps the schedule)."""
    schedule_epochs = args.schedule_epochs
    if args.lr_schedule != "constant" and schedule_epochs is None:
        schedule_epochs = args.epochs
    return TrainConfig(
        objective=args.objective,
        particles=args.particles,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        clip_norm=args.clip_norm,
        lr_schedule=args.lr_schedule,
        schedule_epochs=schedule_epochs,
        lr_final=args.lr_final,
        kl_warmup=float(args.kl_warmup),
        ema_decay=args.ema,
        keep_best=args.keep_best,
        fused=args.fused,
        flush_denormal=args.flush_denormal,
        compile=args.compile,
        traced=args.traced,
    )


def settings_of(args, image_shape):
    """``(model, data, train)``: the settings the options give for images of ``image_shape``,
    without those a resume may change (epochs, device, the data folder)."""
    data = data_config(args)
    model = model_config(args, image_shape, data.binary)
    return (model, dict(data.to_dict(), root=None), dict(train_config(args).to_dict(), epochs=None, device=None))


def _init_weights(model, run_dir, flag="--init", what="model of this command"):
    """Load into ``model`` the weights that ``pyro-vae evaluate`` takes from the run in
    ``run_dir`` (:func:`~pyro_vae.runs.run_weights`, ``"best"``), after checking that the run's
    model settings are ``model.config``. Returns what ``run.json`` records of it: the folder,
    the weights and the epochs the run had trained.

    :param str flag: the option that named ``run_dir``, and ``what`` the model, for the errors.
    :raises UsageError: if ``run_dir`` holds no run, or one of another model."""
    run_dir = Path(run_dir)
    run = read_run_dir(run_dir, flag)
    try:
        state = runs.load_checkpoint(run_dir / runs.CHECKPOINT, map_location="cpu")
        check_config(state.get("config"), model.config, what=what)
        load_weights(model, runs.run_weights(state, "best"), what=f"model of {run_dir}")
    except runs.CheckpointError as e:
        raise UsageError(f"{flag} {run_dir}: {e}") from None
    best = state.get("best")
    return dict(
        run=str(run_dir),
        weights="best" if isinstance(best, dict) else "last",
        epoch=int(best["epoch"]) if isinstance(best, dict) and "epoch" in best else run.get("epoch"),
        epochs_trained=run.get("epoch"),
    )


def _m1_weights(model, run_dir, train):
    """M1+M2: load M1's weights from the VAE run in ``run_dir`` (as :func:`_init_weights`) into
    ``model.features`` and standardize the features over the training images ``train.x``.
    Returns the record of them for ``run.json``'s ``init`` (``part: "m1"``)."""
    vae = build_model(model.config["m1"])
    init = _init_weights(vae, run_dir, "--m1", what="M1 of --model m1m2")
    model.features.load_vae(vae).standardize(train.x)
    return dict(init, part="m1")


def _train(args, device, out, timeout):
    data = data_config(args)
    train, valid = load_splits(data, download=args.download)
    config = model_config(args, train.image_shape, data.binary)
    torch.manual_seed(args.seed)  # the initial weights follow --seed too (torch's own seed is random)
    model = build_model(config)
    # a new run from another's weights, or a resumed one keeping the record of those it started from
    init = _init_weights(model, args.init) if getattr(args, "init", None) else getattr(args, "resumed_init", None)
    if getattr(args, "m1", None) is not None and not getattr(args, "init", None) and not args.resume:
        init = _m1_weights(model, args.m1, train)
    train, valid, with_labels = for_model(model, train, valid, data, download=args.download)
    trainer = make_trainer(model, train, valid, train_config(args), with_labels, device=device)
    run = record(model, data, trainer, args.checkpoint_every)
    if init is not None:
        run["init"] = init
    # checkpoint.pt + run.json every --checkpoint-every steps and at each epoch end, rank 0 only
    save = checkpoints.Checkpointer(out, every=args.checkpoint_every, run=run)
    if args.resume:
        restore(trainer, out / runs.CHECKPOINT)
        if args.epochs <= trainer.epoch:
            missing = missing_figures(model, out)
            if missing and trainer.epoch_step == 0:  # killed after its last checkpoint, before its figures
                if distributed.is_main():
                    model.eval()
                    write_figures(model, trainer.history.to_dict(), valid, out, only=missing)
                    print(
                        f"--resume {out}: the run has already trained {trainer.epoch} epochs; wrote its "
                        f"missing figures {', '.join(missing)}"
                    )
                return 0
            raise UsageError(
                f"--resume {out}: the run has already trained {trainer.epoch} epochs; "
                f"pass --epochs N with N > {trainer.epoch} to train further"
            )
    main_rank = distributed.is_main()
    if main_rank:
        print(
            f"training a {config['model']} ({config['network']}, z_dim={config['z_dim']}, "
            f"{config['likelihood']} likelihood, {config['guide']} guide"
            + (f", VampPrior of {config['pseudo_inputs']} pseudo-inputs" if config.get("prior") == "vamp" else "")
            + (f", {config['prior']} prior" if config.get("prior") in ("fixed", "learned") else "")
            + f") on {args.dataset} "
            f"({len(train)} train / {len(valid)} valid) with {args.objective}, writing {out}"
            + (
                f"; resuming after step {trainer.step_count} (epoch {trainer.epoch + 1}, batch {trainer.epoch_step})"
                if args.resume
                else ""
            )
            + (f"; {trainer.world_size} processes" if trainer.world_size > 1 else "")
        )
    try:
        history = trainer.run(
            args.epochs - trainer.epoch,
            progress=not args.no_progress,
            callback=save.on_epoch,
            step_callback=save.on_step,
        )
    except RuntimeError as e:  # under torchrun: a collective that timed out or lost a rank
        if not distributed.is_initialized() or isinstance(e, runs.CheckpointError):
            raise
        raise distributed.DistributedError.explain(e, timeout, trainer.last_checkpoint) from None
    if not main_rank:  # rank 0 writes the figures
        return 0
    model.eval()
    write_figures(model, history.to_dict(), valid, out)
    print(
        f"epoch {trainer.epoch}: train {trainer.label} {history.train_loss[-1]:.3f}, "
        f"valid {trainer.label} {history.valid_loss[-1]:.3f} nats per data point; wrote {out}"
    )
    return 0
