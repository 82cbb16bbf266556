"""What ``run.json`` must hold (:func:`check_run`), and the migration of older formats to
this version's (:func:`upgrade`); :func:`read_run` does both.

The format is :data:`pyro_vae.config.FORMAT` (3), laid out in :mod:`pyro_vae.config`. Older
files are read as follows:

- formats 0 and 1 (no ``"format"`` key, or 1) named the guide's module ``posterior``:
  :func:`pyro_vae.runs.files.load_checkpoint` renames those weights;
- formats 0 to 2 stored the training settings in two places, eight of them under
  ``"train"`` and every ``pyro-vae train`` option under ``"options"``. :func:`upgrade` builds
  the whole :class:`~pyro_vae.config.TrainConfig` (and the data's label settings) from both
  and drops ``"options"``, so that a resume of an old folder reads the same settings as one of
  a new folder.
"""

import inspect

from ..config import FORMAT, ConfigError, DataConfig, ModelConfig, RunRecord, TrainConfig, check_format, kind_of
from .files import RUN_JSON, CheckpointError, read_json

#: ``pyro-vae train``'s option names (formats 0 to 2's ``"options"``) that became
#: TrainConfig fields of other names.
_RENAMED_OPTIONS = {"ema": "ema_decay"}
#: The options that became DataConfig fields (the semi-supervised VAE's labels).
_DATA_OPTIONS = ("labels", "label_seed", "labelled_every")


def _builder_keywords(kind):
    """The keywords the builder of model ``kind`` takes (None: any, or unknown here)."""
    try:
        from ..models import MODEL_BUILDERS
    except ImportError:  # no registry to check against: the builder will say
        return None
    builder = MODEL_BUILDERS.get(kind) if isinstance(kind, str) else None
    if builder is None:
        raise KeyError(kind)
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_run(run, path=RUN_JSON):
    """Check what a ``run.json`` holds before anything is built from it: an object,
    in a format this version reads, with a ``model`` object whose settings have the
    right types (:class:`~pyro_vae.config.ModelConfig`) and are all known to the model's
    builder, and ``data``/``train`` entries of the right types
    (:class:`~pyro_vae.config.DataConfig`, :class:`~pyro_vae.config.TrainConfig`).

    :raises CheckpointError: one line naming the file and the entry.
    """
    where = str(path)
    if not isinstance(run, dict):
        raise CheckpointError(f"{where} is not a run's record: it holds {kind_of(run)}, not an object")
    try:
        RunRecord.check(run, where)
        check_format(run, where)
        if "model" not in run:
            raise CheckpointError(f'{where} holds no model settings (no "model" entry)')
        model = ModelConfig.check(run["model"], where, "model.")
        for key, config in (("data", DataConfig), ("train", TrainConfig)):
            if key in run:
                config.check(run[key], where, f"{key}.")
        if run.get("format", 0) >= FORMAT and isinstance(run.get("train"), dict):
            unknown = sorted(set(run["train"]) - set(TrainConfig.__dataclass_fields__))
            if unknown:
                raise CheckpointError(
                    f"{where}: train.{unknown[0]} is not a setting of the trainer (the settings "
                    f"are TrainConfig's: {', '.join(TrainConfig.__dataclass_fields__)})"
                )
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    kind = model.get("model", "vae")
    try:
        known = _builder_keywords(kind)
    except KeyError:
        from ..models import MODEL_BUILDERS

        raise CheckpointError(
            f"{where}: model.model {kind!r} is not a known model kind; choose from "
            f"{', '.join(sorted(map(str, MODEL_BUILDERS)))}"
        ) from None
    if known is not None:
        unknown = sorted(set(model) - known - {"model"})
        if unknown:
            raise CheckpointError(
                f"{where}: unknown model setting{'s' * (len(unknown) > 1)} "
                f"{', '.join(unknown)} (a {kind} takes {', '.join(sorted(known))})"
            )
    for key, value in run.get("history", {}).items():
        if key == "objective" and isinstance(value, str):
            continue
        if not isinstance(value, list) or not all(v is None or isinstance(v, (int, float)) for v in value):
            raise CheckpointError(f"{where}: history.{key} must be a list of numbers, got {kind_of(value)}")
    return run


def upgrade(run):
    """``run`` (a checked ``run.json`` of any format this version reads) in format
    :data:`~pyro_vae.config.FORMAT`: the training settings of formats 0 to 2, split between
    ``"train"`` and ``"options"``, joined into one :class:`~pyro_vae.config.TrainConfig`, the
    label settings moved to ``"data"``, ``"options"`` dropped. A run of format 3 is returned
    as it is."""
    if run.get("format", 0) >= FORMAT:
        return run
    run = dict(run)
    options = run.pop("options", None) or {}
    names = {f for f in TrainConfig.__dataclass_fields__}
    if "train" in run or options:
        train = dict(run.get("train", {}))
        for key, value in options.items():
            key = _RENAMED_OPTIONS.get(key, key)
            if key in names:
                train[key] = value
        run["train"] = TrainConfig.from_dict(train, "run.json (migrated)", "train.").to_dict()
    if options:
        data = dict(run.get("data", {}))
        for key in _DATA_OPTIONS:
            if options.get(key) is not None:
                data[key] = options[key]
        if options.get("data") is not None:
            data["root"] = options["data"]
        run["data"] = data
        run["data"] = DataConfig.from_dict(data, "run.json (migrated)", "data.").to_dict()
        if options.get("checkpoint_every") is not None:
            run["checkpoint_every"] = options["checkpoint_every"]
    run["format"] = FORMAT
    return run


def read_run(path):
    """Read a ``run.json``, check it (:func:`check_run`) and bring it to this version's
    format (:func:`upgrade`, checked again).

    :raises CheckpointError: one line naming the file and the entry."""
    run = check_run(read_json(path), path)
    if run.get("format", 0) < FORMAT:
        where = f"{path} (format {run.get('format', 0)}, read as format {FORMAT})"
        try:
            run = upgrade(run)
        except ConfigError as e:
            raise CheckpointError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
        run = check_run(run, where)
    return run


def record(model, data, trainer, checkpoint_every=None):
    """What ``run.json`` holds besides the history, epoch and step (which the
    :class:`~pyro_vae.train.checkpoints.Checkpointer` adds at each save): the three configs,
    the number of training points, the processes, the checkpoints' cadence.

    :param model: a model with a ``config`` (its builder's settings).
    :param DataConfig data: the data's settings.
    :param trainer: the :class:`~pyro_vae.train.Trainer` (its ``config``, ``num_data``,
        ``world_size``).
    """
    return dict(
        model=dict(model.config),
        data=data.to_dict(),
        train=trainer.config.to_dict(),
        num_data=trainer.num_data,
        world_size=trainer.world_size,
        checkpoint_every=checkpoint_every,
    )
