"""The typed settings of a run, as ``run.json`` stores them beside the weights.

``run.json`` (format 3) is one JSON object::

    {"format": FORMAT,
     "model": {...},          # ModelConfig and the kind's own settings: what build_model takes
     "data":  {...},          # DataConfig: which data set, binarized how, which labels kept
     "train": {...},          # TrainConfig: every option of the Trainer
     "checkpoint_every": K,   # the Checkpointer's cadence in steps (null: epoch ends only)
     "history": {...}, "epoch": E, "step": S, "num_data": N, "world_size": W, "best": {...}}

A resume reads the three configs back and nothing else. Each config is a dataclass whose
fields carry the check their JSON value must pass (``metadata["check"]``, one of
:data:`CHECKS`); :meth:`Config.check` checks a stored object entry by entry and
:meth:`Config.from_dict` gives the typed settings, defaults filled in. A file in a newer
format than :data:`FORMAT` is refused, naming its version; older formats are read through
:func:`pyro_vae.runs.schema.upgrade` (formats 0 and 1 named the guide's module
``posterior``; formats 0 to 2 kept the command line's options under ``"options"``).
"""

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields

#: The format of ``run.json`` this version writes.
FORMAT = 3


class ConfigError(ValueError):
    """A stored setting of the wrong type or out of range."""


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: The checks a stored value can be held to: name -> (predicate, what it must be).
CHECKS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (is_int, "an integer"),
    "pos_int": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "nonneg_int": (lambda v: is_int(v) and v >= 0, "an integer ≥ 0"),
    "number": (is_number, "a finite number"),
    "pos_number": (lambda v: is_number(v) and v > 0, "a positive number"),
    "nonneg_number": (lambda v: is_number(v) and v >= 0, "a number ≥ 0"),
    "unit_interval": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "pos_ints": (lambda v: isinstance(v, list) and all(is_int(i) and i > 0 for i in v), "a list of positive integers"),
    "shape": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(is_int(i) and i > 0 for i in v),
        "a list of 3 positive integers (C, H, W)",
    ),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
}


def kind_of(value):
    """How an error names a JSON value's type: ``"an object"``, ``"null"``, …"""
    return (
        "null"
        if value is None
        else {
            dict: "an object",
            list: "a list",
            str: "a string",
            bool: "a boolean",
            int: "an integer",
            float: "a number",
        }.get(type(value), type(value).__name__)
    )


def _shown(value):
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return kind_of(value)
    return text if len(text) <= 60 else kind_of(value)


def entry(check, default=None, nullable=False):
    """A config field whose stored value must pass ``CHECKS[check]`` (or be null)."""
    kw = dict(default_factory=default) if callable(default) else dict(default=default)
    return field(metadata={"check": check, "nullable": nullable}, **kw)


class Config:
    """Checks and conversions shared by the configs (dataclasses of :func:`entry` fields)."""

    @classmethod
    def check(cls, obj, where, prefix=""):
        """Check the entries of a stored object that are fields of this config.

        :param dict obj: the stored object, e.g. ``run["train"]``.
        :param str where: the file, for the message.
        :param str prefix: the object's key, e.g. ``"train."``.
        :raises ConfigError: ``"<where>: <prefix><key> must be <what>, got <value>"``.
        """
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: {prefix.rstrip('.')} must be an object, got {kind_of(obj)}")
        for f in fields(cls):
            if f.name not in obj:
                continue
            value, nullable = obj[f.name], f.metadata["nullable"]
            if value is None and nullable:
                continue
            ok, what = CHECKS[f.metadata["check"]]
            if not ok(value):
                raise ConfigError(
                    f"{where}: {prefix}{f.name} must be {what}{' or null' if nullable else ''}, got {_shown(value)}"
                )
        return obj

    @classmethod
    def from_dict(cls, obj, where="run.json", prefix=""):
        """The typed settings a stored object holds (checked), defaults for what it lacks;
        entries that are not fields are left out."""
        cls.check(obj, where, prefix)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def to_dict(self):
        """The settings as plain JSON values."""
        return asdict(self)


@dataclass(frozen=True)
class ModelConfig(Config):
    """The settings every model builder takes (:func:`~pyro_vae.models.build_model`); a
    kind may take more (``guide_kwargs``, ``num_classes``), which its builder checks."""

    model: str = entry("str", "vae")
    image_shape: list = entry("shape", lambda: [1, 28, 28])
    z_dim: int = entry("pos_int", 50)
    network: str = entry("str", "mlp")
    hidden_dims: list = entry("pos_ints", lambda: [400])
    likelihood: str = entry("str", "bernoulli")
    guide: str = entry("str", "diagonal")
    scale: float | None = entry("pos_number", None, nullable=True)
    prior: str | None = entry("str", None, nullable=True)


@dataclass(frozen=True)
class DataConfig(Config):
    """The data a run was trained on: :func:`~pyro_vae.data.load_dataset` ``(dataset,
    split, root, binarize=binarize, seed=seed)`` (``root``: the data folder it was read from,
    None for the default); for the semi-supervised VAE also the labels kept
    (:func:`~pyro_vae.data.semisupervised.semisupervised` ``(train, labels,
    seed=label_seed, labelled_every=labelled_every)``) and ``unlabelled``, a second data set
    whose training images join the unlabelled points (None: none)."""

    dataset: str = entry("str", "digits")
    binarize: str | None = entry("str", None, nullable=True)
    seed: int = entry("int", 0)
    labels: int | None = entry("pos_int", None, nullable=True)
    label_seed: int = entry("int", 0)
    labelled_every: int = entry("pos_int", 1)
    unlabelled: str | None = entry("str", None, nullable=True)
    root: str | None = entry("str", None, nullable=True)

    @property
    def eval_binarize(self):
        """The binarization evaluation uses: a run trained on dynamically binarized data is
        evaluated on one fixed (static) draw, so that two evaluations see the same data."""
        return "static" if self.binarize == "dynamic" else self.binarize

    @property
    def binary(self):
        """Whether the data are binary (a Bernoulli likelihood fits them)."""
        return self.dataset == "binarized-mnist" or self.binarize in ("static", "dynamic")


@dataclass(frozen=True)
class TrainConfig(Config):
    """The options of a :class:`~pyro_vae.train.Trainer`, all of them: what ``run.json``
    stores under ``"train"`` and what a resume reads back.

    :ivar str objective: a name of :func:`~pyro_vae.objectives.make_objective`.
    :ivar int particles: L, particles per data point.
    :ivar str optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
    :ivar float lr: the learning rate (at epoch 0 under a schedule).
    :ivar float weight_decay: λ, the optimizer's weight decay (``torch.optim``'s: the L2 term
        λθ added to the gradient by Adam and SGD, θ ← θ − ηλθ decoupled by AdamW; 0: off).
    :ivar int batch_size: B, data points per step.
    :ivar int epochs: E, the epochs :func:`~pyro_vae.train.fit` and a resume train to.
    :ivar int seed: seeds Pyro, torch, Python, NumPy and the batch order.
    :ivar str device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    :ivar float clip_norm: the gradient's global norm is clipped to it (None: off).
    :ivar str lr_schedule: ``"constant"``, ``"cosine"`` or ``"exponential"``.
    :ivar int schedule_epochs: T, where the schedule reaches ``lr_final`` (None: E).
    :ivar float lr_final: the learning rate at epoch T (None: lr/10).
    :ivar float kl_warmup: epochs over which β rises from 0 to 1 (0: off).
    :ivar float ema_decay: decay of the weights' moving average (None: off).
    :ivar bool keep_best: keep the weights of the best validation epoch.
    :ivar bool fused: the optimizer's fused step.
    :ivar bool compile: ``torch.compile`` the networks.
    :ivar bool traced: step with :class:`~pyro_vae.objectives.CompiledTrace_ELBO`.
    :ivar bool flush_denormal: count subnormal floats as 0 while training and validating.
    :ivar int valid_batch_size: points per validation batch.
    """

    objective: str = entry("str", "elbo")
    particles: int = entry("pos_int", 1)
    optimizer: str = entry("str", "adam")
    lr: float = entry("pos_number", 1e-3)
    weight_decay: float = entry("nonneg_number", 0.0)
    batch_size: int = entry("pos_int", 128)
    epochs: int = entry("pos_int", 30)
    seed: int = entry("int", 0)
    device: str = entry("str", "cpu")
    clip_norm: float | None = entry("pos_number", None, nullable=True)
    lr_schedule: str = entry("str", "constant")
    schedule_epochs: int | None = entry("pos_int", None, nullable=True)
    lr_final: float | None = entry("pos_number", None, nullable=True)
    kl_warmup: float = entry("nonneg_number", 0.0)
    ema_decay: float | None = entry("unit_interval", None, nullable=True)
    keep_best: bool = entry("bool", False)
    fused: bool = entry("bool", False)
    compile: bool = entry("bool", False)
    traced: bool = entry("bool", False)
    flush_denormal: bool = entry("bool", False)
    valid_batch_size: int = entry("pos_int", 1000)

    def replace(self, **changes):
        """A copy with ``changes`` (field names of this config; others are a TypeError)."""
        return dataclasses.replace(self, **changes)

    @property
    def scheduled_epochs(self):
        """T: ``schedule_epochs``, or ``epochs`` when not set."""
        return self.epochs if self.schedule_epochs is None else self.schedule_epochs


@dataclass(frozen=True)
class RunRecord(Config):
    """The top-level entries of ``run.json`` (the three configs are checked by their own class)."""

    format: int = entry("nonneg_int", FORMAT)
    model: dict = entry("dict", dict)
    data: dict = entry("dict", dict)
    train: dict = entry("dict", dict)
    options: dict = entry("dict", dict)  # formats 0 to 2 only
    checkpoint_every: int | None = entry("pos_int", None, nullable=True)
    history: dict = entry("dict", dict)
    epoch: int = entry("nonneg_int", 0)
    step: int = entry("nonneg_int", 0)
    num_data: int | None = entry("pos_int", None, nullable=True)
    world_size: int = entry("pos_int", 1)
    init: dict | None = entry("dict", None, nullable=True)  # the run whose weights it started from


def check_format(run, where):
    """Refuse a ``run.json`` written in a newer format than :data:`FORMAT`, naming it."""
    version = run.get("format", 0)
    if version > FORMAT:
        raise ConfigError(
            f"{where} is in format {version}, written by a newer pyro-vae; this one reads formats up to {FORMAT}"
        )
    return version
