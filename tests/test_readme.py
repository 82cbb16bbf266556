"""The README's Pyro-style snippet runs as written and trains both of its models."""

import contextlib
import io
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_block(heading):
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_plain_svi_snippet_trains_two_models_in_one_process():
    code = readme_block("## A VAE in Pyro style")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    losses = [float(v) for v in re.findall(r"-ELBO ([\d.]+) nats", out.getvalue())]
    assert len(losses) == 2, out.getvalue()
    # untrained, a Bernoulli decoder of 64 pixels scores about 64 log 2 ≈ 44 nats per image
    assert all(loss < 35 for loss in losses), losses


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    """All of the README's Python blocks, one namespace, in a folder holding the run
    ``runs/digits`` that the loading example reads (written by ``pyro-vae train``)."""
    import torch
    from run_helpers import TINY

    from pyro_vae.cli import main

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 3, "the README's Python start, the trainer and the own-data blocks"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--out", "runs/digits", *TINY]) == 0
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md, Python block {i + 1}", "exec"), namespace)
    log_px = namespace["log_px"]
    assert log_px.shape == (100,) and torch.isfinite(log_px).all()
    assert namespace["history"].valid_loss[-1] < 35  # the trainer's digits model learned (untrained ≈ 44)


def readme_commands():
    """The ``pyro-vae`` lines of the README's shell blocks (continuations joined, comments
    dropped), as argument lists."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["pyro-vae"]:
                commands.append(words[1:])
    return commands


def test_every_pyro_vae_command_runs_in_order(tmp_path, monkeypatch, shared_data):
    """The README's ``pyro-vae`` commands, in order, in a fresh folder, with ``../shared/data``
    where the data is and training cut to one epoch (the last ``--epochs`` wins)."""
    from pyro_vae.cli import main

    commands = readme_commands()
    assert [c[0] for c in commands].count("train") >= 2 and ["sample", "runs/bmnist", "-n", "64"] in commands
    monkeypatch.chdir(tmp_path)
    for args in commands:
        args = [str(shared_data) if a == "../shared/data" else a for a in args]
        if args[0] == "train":
            args += ["--epochs", "1", "--no-progress"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(args) == 0, "pyro-vae " + " ".join(args)
    for folder in ("digits", "bmnist", "default"):  # the run folders the commands name
        assert (tmp_path / "runs" / folder / "run.json").is_file(), folder
    assert (tmp_path / "runs" / "bmnist" / "samples.png").is_file()
