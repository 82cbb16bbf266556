"""Training a run folder's model from its settings: the one path that ``pyro-vae train``,
``pyro-vae train --resume`` and :func:`resume` share.

A run is its three configs (``run.json``'s ``model``, ``data`` and ``train``): the model is
``build_model(model)``, the data :func:`for_model` ``(model, *load_splits(data), data)`` and the trainer
:func:`make_trainer` ``(model, ..., train)``. A resume builds the three again, loads
``checkpoint.pt``'s trainer state (:meth:`~pyro_vae.train.Trainer.load_state_dict`) and
trains on; on a CPU the result is bit-identical to the run never stopped.
"""

from pathlib import Path

from ..config import DataConfig, TrainConfig
from ..contract import contract
from ..data import ImageData, load_dataset
from ..data.semisupervised import semisupervised
from ..models import build_model
from ..models.m1m2 import StackedSemiSupervisedVAE
from ..models.ssvae import SemiSupervisedVAE, ssvae_objective
from ..train import checkpoints as trainer_files
from ..train.trainer import Trainer, final_weights
from .files import CHECKPOINT, RUN_JSON, CheckpointError, load_checkpoint
from .lock import RunLock
from .schema import read_run, record


def load_splits(data, root=None, download=False):
    """The training and validation splits ``data`` names, as :func:`~pyro_vae.data.load_dataset`
    gives them.

    :param DataConfig data: which data set, binarized how.
    :param root: the data folder (default ``data.root``, else ``$PYRO_VAE_DATA``).
    :returns: ``(train, valid)``.
    """
    return tuple(
        load_dataset(data.dataset, split, root or data.root, binarize=data.binarize, seed=data.seed, download=download)
        for split in ("train", "valid")
    )


def semi_supervised(model):
    """Whether ``model`` trains with labels kept or summed out: the semi-supervised VAE (M2)
    and its stack on an M1 (M1+M2)."""
    return isinstance(model, (SemiSupervisedVAE, StackedSemiSupervisedVAE))


def for_model(model, train, valid, data, root=None, download=False):
    """The splits in the form ``model`` trains on: a conditional VAE gets its labels or masks
    attached (its ``prepare_data``); the semi-supervised VAE keeps ``data.labels`` training
    labels (:func:`~pyro_vae.data.semisupervised.semisupervised`: its batches are ``(x, y)``,
    y given or ``None``), with the training images of ``data.unlabelled`` (read from ``root``,
    default ``data.root``) added as unlabelled points, and is validated on the images alone
    (``y = None``: summed out).

    :returns: ``(train, valid, with_labels)``.
    """
    if data.unlabelled is not None and not semi_supervised(model):
        raise ValueError(
            f"unlabelled images ({data.unlabelled}) are for a semi-supervised model, not {type(model).__name__}"
        )
    if semi_supervised(model):
        if data.labels is None:
            raise ValueError("the semi-supervised VAE needs data.labels, the number of training labels to keep")
        extra = None
        if data.unlabelled is not None:
            extra = load_dataset(
                data.unlabelled, "train", root or data.root, binarize=data.binarize, seed=data.seed, download=download
            )
        train = semisupervised(
            train, data.labels, seed=data.label_seed, labelled_every=data.labelled_every, unlabelled=extra
        )
        valid = ImageData(
            x=valid.x, image_shape=valid.image_shape, name=f"{valid.name} (unlabelled)", source=valid.source
        )
        return train, valid, True
    if contract(model).conditional:
        return model.prepare_data(train), model.prepare_data(valid), True
    return train, valid, False


def make_trainer(model, train, valid, config, with_labels=False, device=None):
    """``Trainer(model, train, valid, config)``, the semi-supervised VAE stepping with its
    enumerated objective (:func:`~pyro_vae.models.ssvae.ssvae_objective`).

    :param device: overrides ``config.device`` (e.g. the rank's GPU under torchrun).
    """
    objective = ssvae_objective(config.objective, config.particles) if semi_supervised(model) else None
    return Trainer(
        model,
        train,
        valid,
        config,
        objective=objective,
        with_labels=with_labels,
        **({"device": str(device)} if device is not None else {}),
    )


def restore(trainer, path):
    """Load a run's checkpoint into ``trainer``: checked first (finite weights, a whole
    trainer state), so that a corrupt file is a one-line error, not a traceback or a run
    that starts from NaN.

    :raises CheckpointError: naming the file and what is wrong."""
    state = trainer_files.check_trainer_state(load_checkpoint(path), path)
    try:
        trainer.load_state_dict(state)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"{path}: its trainer state cannot be restored "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})"
        ) from None
    trainer.last_checkpoint = f"{path} (loaded to resume, step {trainer.step_count}" + (
        f", epoch {trainer.epoch + 1} batch {trainer.epoch_step})"
        if trainer.epoch_step
        else f", end of epoch {trainer.epoch})"
    )


def resume(run_dir, epochs=None, root=None, device=None, progress=False, download=False):
    """Continue the run in ``run_dir`` (written by ``pyro-vae train`` or by
    :func:`~pyro_vae.train.fit` ``(..., out=run_dir)``) from its last checkpoint, to
    ``epochs`` epochs, with the settings its ``run.json`` stores, holding the folder's lock.
    The weights, history and random state at the end equal those of the run trained to
    ``epochs`` without a stop (bit for bit on a CPU).

    :param int epochs: the epochs to train to (default: the run's ``train.epochs``, which
        finishes a run that was stopped); stored as the run's new ``train.epochs``.
    :param root: the data folder (default: the run's own, else ``$PYRO_VAE_DATA``).
    :param device: where to train (default: the run's ``train.device``).
    :returns: ``(model, history)``: the model with the weights to evaluate (as
        :func:`~pyro_vae.train.fit` leaves them) and the :class:`~pyro_vae.train.History`.
    :raises CheckpointError: if the folder holds no run, or its files do not fit
        each other. :raises RunLockedError: if another process writes the folder.
        :raises ValueError: if the run has already trained ``epochs`` epochs.
    """
    run_dir = Path(run_dir)
    for name in (RUN_JSON, CHECKPOINT):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: there is no {name} there; is it a run folder written by "
                "pyro-vae train or fit(..., out=...)?"
            )
    with RunLock(run_dir, what="run folder"):
        run = read_run(run_dir / RUN_JSON)
        if "train" not in run or "data" not in run:
            raise CheckpointError(
                f"{run_dir / RUN_JSON} stores no training or data settings, so the run cannot be resumed"
            )
        config = TrainConfig.from_dict(run["train"])
        config = config.replace(**{k: v for k, v in (("epochs", epochs), ("device", device)) if v is not None})
        data = DataConfig.from_dict(run["data"])
        model = build_model(run["model"])
        train, valid, with_labels = for_model(model, *load_splits(data, root, download), data, root, download)
        trainer = make_trainer(model, train, valid, config, with_labels)
        restore(trainer, run_dir / CHECKPOINT)
        if config.epochs <= trainer.epoch:
            raise ValueError(
                f"{run_dir}: the run has already trained {trainer.epoch} epochs; pass epochs=N "
                f"with N > {trainer.epoch} to train further"
            )
        save = trainer_files.Checkpointer(
            run_dir, every=run.get("checkpoint_every"), run=record(model, data, trainer, run.get("checkpoint_every"))
        )
        history = trainer.run(
            config.epochs - trainer.epoch, progress=progress, callback=save.on_epoch, step_callback=save.on_step
        )
    final_weights(trainer)
    return model, history
