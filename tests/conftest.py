import os
import shutil
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store and seeded RNGs, and leaves Pyro's
    validation flag and torch's default for distributions' argument checks as it found them."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pyro_flag = pyro.poutine.util.is_validation_enabled()
    torch_flag = torch.distributions.Distribution._validate_args
    yield
    pyro.clear_param_store()
    pyro.enable_validation(pyro_flag)
    torch.distributions.Distribution.set_default_validate_args(torch_flag)


def _shared_data():
    for candidate in (os.environ.get("PYRO_VAE_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "binarized_mnist").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data():
    """The folder of ../shared/data (binarized MNIST, MNIST test IDX files).

    In CI (``CI`` set) a missing folder fails the test: CI always has it."""
    path = _shared_data()
    if path is None:
        msg = "the shared data folder (../shared/data or $PYRO_VAE_DATA) is missing"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def one_thread():
    """Tiny networks: one thread is fastest on a shared CPU (and resumed runs compare
    bit for bit only at the same thread count). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run folder trained one epoch on digits (once per test module)."""
    from run_helpers import TINY

    from pyro_vae.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of :func:`finished_run` that a test may change."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy
