"""pyro_vae.ops.kernels: the matrix-product kernel of a traced graph, and whether the
log1p-free rewrite applies, chosen by timing."""

import pyro
import pytest
import torch

from pyro_vae import build_vae, load_dataset
from pyro_vae.objectives import TracedELBO
from pyro_vae.ops import kernels

pytestmark = pytest.mark.usefixtures("one_thread")
ONEDNN = torch.ops.pyro_vae.onednn_matmul.default


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(kernels, "_MATMUL", {})
    monkeypatch.setattr(kernels, "_REWRITE", {})
    monkeypatch.delenv("PYRO_VAE_MATMUL", raising=False)
    monkeypatch.delenv("PYRO_VAE_LOG1P_FREE", raising=False)


def _graph_kernels(faster, monkeypatch):
    """The products of the default traced graph when ``faster`` is timed faster."""
    monkeypatch.setattr(kernels, "time_products", lambda shapes, k: 1.0 if k == faster else 2.0)
    return _default_graph()


def _default_graph():
    """The loss of the default traced graph (its kernels and rewrite chosen as set) and its ops."""
    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=4, hidden_dims=(16,))
    x = load_dataset("digits", "train", binarize="static").x[:48]
    traced = TracedELBO(vae, vae.model, vae.guide, loss_scale=1 / 1000, compile=False)
    pyro.set_rng_seed(3)
    loss = traced(x, num_data=1000)[0]
    graph = next(iter(traced.graphs.values()))[0]
    return loss, {n.target for n in graph.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("faster", kernels.KERNELS)
def test_the_default_graph_takes_the_kernel_timed_faster(fresh, monkeypatch, faster):
    loss, targets = _graph_kernels(faster, monkeypatch)
    assert (ONEDNN in targets) == (faster == "onednn")
    (choice,) = kernels.choices()["matmul"].values()
    assert choice["kernel"] == faster and set(choice["seconds"]) == set(kernels.KERNELS)
    other, _ = _graph_kernels("aten" if faster == "onednn" else "onednn", monkeypatch)
    assert len(kernels.choices()["matmul"]) == 1  # cached for the process: the same shapes are not timed again
    assert other.item() == pytest.approx(loss.item(), rel=1e-6)


def test_the_environment_forces_a_kernel(fresh, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_MATMUL", "aten")
    _, targets = _graph_kernels("onednn", monkeypatch)
    assert ONEDNN not in targets and kernels.choices()["matmul"] == {}
    monkeypatch.setenv("PYRO_VAE_MATMUL", "blas")
    with pytest.raises(ValueError, match="PYRO_VAE_MATMUL must be one of aten, onednn, got 'blas'"):
        kernels.choose_matmul([(2, 3, 4, False)])


def test_timing_measures_both_kernels_on_the_graphs_shapes(fresh):
    shapes = [(48, 64, 16, True), (16, 48, 64, False)]
    assert all(kernels.time_products(shapes, k, repeats=3) > 0 for k in kernels.KERNELS)
    assert kernels.choose_matmul(shapes) in kernels.KERNELS
    assert list(kernels.choices()["matmul"]) == [tuple(shapes)]


def _softplus_and_bce_left(faster, monkeypatch):
    """Whether the default traced graph keeps aten's softplus and Bernoulli log-density
    when the variant ``faster`` ("plain" or "log1p_free") is timed faster."""
    monkeypatch.setattr(
        kernels, "_median_seconds", lambda fns, repeats: [1.0, 2.0] if faster == "plain" else [2.0, 1.0]
    )
    loss, targets = _default_graph()
    aten = torch.ops.aten
    return loss, {aten.softplus.default, aten.binary_cross_entropy_with_logits.default} <= targets


def test_the_log1p_free_rewrite_is_applied_only_where_timed_faster(fresh, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_MATMUL", "aten")
    plain_loss, left = _softplus_and_bce_left("plain", monkeypatch)
    assert left
    (choice,) = kernels.choices()["log1p_free"].values()
    assert choice == {"rewrite": False, "seconds": {"plain": 1.0, "log1p_free": 2.0}}
    monkeypatch.setattr(kernels, "_REWRITE", {})
    loss, left = _softplus_and_bce_left("log1p_free", monkeypatch)
    assert not left and loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    monkeypatch.setattr(kernels, "_REWRITE", {})
    monkeypatch.setenv("PYRO_VAE_LOG1P_FREE", "0")  # forced: no timing
    _, left = _softplus_and_bce_left("log1p_free", monkeypatch)
    assert left and kernels.choices()["log1p_free"] == {}
    monkeypatch.setenv("PYRO_VAE_LOG1P_FREE", "yes")
    with pytest.raises(ValueError, match="PYRO_VAE_LOG1P_FREE must be 0 or 1, got 'yes'"):
        kernels.choose_rewrite("k", lambda: lambda: None, lambda: lambda: None)


def test_a_near_tie_keeps_the_plain_graph(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "_median_seconds", lambda fns, repeats: [1.0, 0.97])  # 3 % < MARGIN
    built = []
    assert kernels.choose_rewrite("k", lambda: built.append(1), lambda: built.append(2)) is False
    assert kernels.choose_rewrite("k", lambda: built.append(3), lambda: built.append(4)) is False
    assert built == [1, 2]  # cached: the variants are not built again
    monkeypatch.setattr(kernels, "time_products", lambda shapes, k: 0.97 if k == "onednn" else 1.0)
    assert kernels.choose_matmul([(2, 3, 4, False)]) == "aten"
