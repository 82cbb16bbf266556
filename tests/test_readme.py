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
