"""The figures ``pyro-vae train`` writes into a run folder: loss curves, reconstructions,
samples, and the three side by side (or one row per class, or completions, for the
conditional VAEs)."""

from pathlib import Path

from .. import runs
from ..contract import contract
from ..plots import plot_losses, save_class_samples, save_completions, save_overview, save_reconstructions, save_samples
from .common import run_data


def figure_names(model):
    """The figures ``pyro-vae train`` writes into a run folder for ``model``."""
    return _figure_names(contract(model))


def _figure_names(offers):
    if offers.conditional:  # conditional VAE: one row per class, or completions
        second = "samples.png" if offers.num_classes else "completions.png"
        return ["loss_curves.png", second]
    return ["loss_curves.png", "reconstructions.png", "samples.png", "overview.png"]


def missing_figures(model, out):
    """The figures of :func:`figure_names` that the run folder ``out`` lacks."""
    return [name for name in figure_names(model) if not (Path(out) / name).is_file()]


def write_figures(model, history, valid, out, only=None):
    """Write the run's figures into ``out`` (only those named in ``only``, if given)."""
    out = Path(out)
    shape = valid.image_shape
    x = valid.x[:32].to(next(model.parameters()).device)
    offers = contract(model)
    wanted = set(_figure_names(offers) if only is None else only)
    if "loss_curves.png" in wanted:
        plot_losses(history, out / "loss_curves.png")
    if offers.conditional:  # conditional VAE: one row per class, or completions
        if offers.num_classes:
            if "samples.png" in wanted:
                save_class_samples(model, shape, out / "samples.png")
        elif "completions.png" in wanted:
            save_completions(model, x[:8], shape, out / "completions.png")
        return
    if "reconstructions.png" in wanted:
        save_reconstructions(model, x, shape, out / "reconstructions.png")
    if "samples.png" in wanted:
        save_samples(model, shape, out / "samples.png")
    if "overview.png" in wanted:
        save_overview(model, x, shape, out / "overview.png")


def write_missing_run_figures(model, run, run_dir, root):
    """Write the training figures (:func:`write_figures`) a run folder lacks, e.g.
    after a kill between the last checkpoint and the figures. Skipped, with a note,
    while another process writes the folder."""
    missing = missing_figures(model, run_dir)
    epochs = run.get("train", {}).get("epochs")
    if not missing or (epochs is not None and run.get("epoch", epochs) < epochs):  # finished runs only
        return []
    try:
        lock = runs.RunLock(run_dir).acquire()
    except runs.CheckpointError as e:
        print(f"note: not writing the missing figures of {run_dir} ({e})")
        return []
    try:
        valid, _ = run_data(run, "valid", root)
        if contract(model).conditional:
            valid = model.prepare_data(valid)
        write_figures(model, run.get("history", {}), valid, run_dir, only=missing)
    finally:
        lock.release()
    print(f"wrote the missing figures of {run_dir}: {', '.join(missing)}")
    return missing
