"""Run folders read back: the model of a run folder with the weights asked for.

A run folder holds ``run.json`` (the model's settings under ``"model"``, the data and
training settings, the history) and ``checkpoint.pt`` (tensors only). The settings are
those a builder takes: ``build_vae(**run["model"])`` for a VAE, or
:func:`~pyro_vae.models.build_model` for any kind of model.
"""

from pathlib import Path

from ..models import build_model
from .files import CHECKPOINT, RUN_JSON, check_config, load_checkpoint, load_weights
from .schema import read_run

WEIGHTS = ("best", "last", "raw")


def run_weights(state, weights="best"):
    """The model weights a trainer state (a ``checkpoint.pt``) holds, by ``weights``:

    - ``"best"``: those of the best validation epoch when the run kept them
      (``keep_best``), else ``"last"``;
    - ``"last"``: the latest weights to evaluate: the moving average when the run kept
      one (``ema_decay``), else ``"raw"``;
    - ``"raw"``: the latest trained weights, as the optimizer left them.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "best" and isinstance(state.get("best"), dict):
        return state["best"]["model"]
    if weights != "raw" and isinstance(state.get("ema"), dict):
        prefix = "module."
        return {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    return state["model"]


def load_run(run_dir, device="cpu", weights="best"):
    """Rebuild the model of a run folder and load its weights.

    The model is built from the settings ``run.json`` stores (:func:`~pyro_vae.models.build_model`),
    its weights loaded from ``checkpoint.pt`` without executing pickled code
    (``weights_only=True``). It keeps no trace of its training data: ``model.model(x)``
    scores the batch ``x`` at scale 1, whatever data set it was trained on.

    :param run_dir: the run folder.
    :param device: where to put the model.
    :param str weights: which weights (:func:`run_weights`): ``"best"`` (default: the best
        validation epoch's, if the run kept them), ``"last"`` or ``"raw"``.
    :returns: ``(model, run)``, the model in eval mode and ``run`` the parsed ``run.json``.
    :raises pyro_vae.runs.CheckpointError: if the folder holds no run, or its files
        do not match each other.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    run_dir = Path(run_dir)
    run = read_run(run_dir / RUN_JSON)
    config = run["model"]
    model = build_model(config)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location="cpu")
    check_config(state.get("config"), getattr(model, "config", None), what=f"run.json of {run_dir}")
    load_weights(model, run_weights(state, weights), what=f"{config.get('model', 'vae')} of {run_dir}")
    return model.to(device).eval(), run
