"""Every example runs end to end, at a tiny size, and writes what it says it writes.

The examples are scripts a user runs as they are (``python examples/NAME.py``), so each
is run here the same way, in a subprocess, with options that make it take seconds: the
numbers they print are not checked (their full-size figures are in the README), only
that they finish and leave their files (figures as PNGs, results as JSON).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# name: (options, files the example must write into OUT); "{data}" is the shared data folder
EXAMPLES = {
    "vae": (["--dataset", "digits", "--epochs", "1", "--hidden", "32"], []),
    "amortized_guide": (
        [
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--families",
            "diagonal",
            "full",
            "--eval-points",
            "10",
            "--nll-samples",
            "10",
        ],
        ["amortized_guide.png"],
    ),
    "cvae": (
        [
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--z-dim",
            "2",
            "--hidden",
            "32",
            "--clf-epochs",
            "1",
            "--samples-per-class",
            "3",
            "--ll-samples",
            "10",
            "--ll-points",
            "40",
        ],
        [],
    ),
    "fisher_ae": (
        [
            "--dataset",
            "digits",
            "--outliers",
            "0",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--z-dim",
            "2",
            "--num-samples",
            "10",
            "--classifier-epochs",
            "1",
        ],
        [],
    ),
    "global_latent": (["--epochs", "1", "--hidden", "32"], None),
    "guides": (
        [
            "--dataset",
            "digits",
            "--limit",
            "300",
            "--guides",
            "diagonal",
            "full",
            "flow",
            "--epochs",
            "1",
            "--z-dim",
            "2",
            "--hidden",
            "32",
            "--eval-points",
            "3",
            "--nll-samples",
            "20",
            "--khat-samples",
            "20",
            "--nuts-samples",
            "20",
            "--gap-points",
            "2",
            "--gap-steps",
            "3",
        ],
        [],
    ),
    "hvae": (
        ["--epochs", "1", "--hidden", "16", "--eval-points", "20", "--nll-samples", "10", "--no-progress"],
        ["samples_one_layer.png", "samples_two_layers.png"],
    ),
    "iwae": (
        [
            "--data",
            "{data}",
            "--k",
            "1",
            "5",
            "--epochs",
            "1",
            "--hidden",
            "16",
            "--train-limit",
            "500",
            "--eval-limit",
            "20",
            "--eval-samples",
            "50",
            "--no-progress",
        ],
        ["results.json", "iwae_bounds.png"],
    ),
    "likelihood_table": (
        [
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--eval-samples",
            "10",
            "--traced",
            "--rows",
            "vae-recipe",
            "iwae5",
            "vae-vamp",
        ],
        [
            "vae-recipe/run.json",
            "vae-recipe/checkpoint.pt",
            "vae-recipe/eval_valid.json",
            "iwae5/eval_valid.json",
            "vae-vamp/eval_valid.json",
        ],
    ),
    "latent_space": (
        ["--dataset", "digits", "--epochs", "1", "--classifier-epochs", "1", "--draws", "50", "--grid", "4"],
        [],
    ),
    "resume": (
        ["--epochs", "2", "--checkpoint-every", "5", "--max-delay", "0.3"],
        ["whole/checkpoint.pt", "killed/checkpoint.pt"],
    ),
    "ssvae": (["--labels", "20", "--epochs", "1", "--hidden", "16", "--z-dim", "2"], ["ssvae_samples.png"]),
    "score_function": (
        ["--phis", "0", "1", "--repeats", "5", "--dataset", "digits", "--limit", "200", "--epochs", "1"],
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path, request):
    options, files = EXAMPLES[name]
    if "{data}" in options:
        # absolute: the example runs in its own working directory
        data = Path(request.getfixturevalue("shared_data")).resolve()
        options = [str(data) if a == "{data}" else a for a in options]
    argv = list(options)
    out = tmp_path / "out"
    if files is not None:
        argv += ["--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / f"{name}.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    if files is None:
        return
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(files) <= written, written
    assert name == "resume" or any(p.endswith(".png") for p in written), written
    for p in written:
        if p.endswith(".json"):
            json.loads((out / p).read_text())  # complete, not cut off


def _without_times(text):
    """The output with wall-clock figures ("3 s", "in 2 s", a table's last column of
    seconds) replaced, so that two runs' numbers can be compared."""
    text = re.sub(r"\d+(\.\d+)? s\b", "T s", text)
    return re.sub(r"\| \d+(\.\d+)? \|$", "| T |", text, flags=re.M)


@pytest.mark.parametrize("name", ["cvae", "fisher_ae"])
def test_example_prints_the_same_numbers_twice(name, tmp_path):
    """Every random source of the example follows its --seed: two runs print the same."""
    outputs = []
    for run in ("a", "b"):
        cwd = tmp_path / run
        cwd.mkdir()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / f"{name}.py"), *EXAMPLES[name][0], "--out", "out"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        outputs.append(_without_times(proc.stdout))
    assert outputs[0] == outputs[1]
