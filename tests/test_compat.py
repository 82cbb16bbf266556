"""pyro_vae._compat: the private torch and Pyro names in one module, and the compiled path's
refusal outside the versions it was tested with (the eager path still runs)."""

import ast
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae import _compat, build_vae, load_dataset
from pyro_vae.objectives import TracedELBO
from pyro_vae.train import Trainer

PRIVATE = {
    "_get_traces",
    "_guess_max_plate_nesting",
    "_setup_prototype",
    "_PYRO_STACK",
    "_inductor",
    "_pytree",
    "_linear_pointwise",
    "_allow_non_fake_inputs",
    "_validate_args",
}


def _private_uses(path):
    """(line, name) of every attribute, keyword, import or name in PRIVATE in a source file's code
    (docstrings aside); a subclass's ``super().name`` is its own override, not a use."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            v = node.value
            if not (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super"):
                uses.append((node.lineno, node.attr))
        elif isinstance(node, ast.keyword) and node.arg in PRIVATE:
            uses.append((node.value.lineno, node.arg))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            uses += [(node.lineno, n) for n in names if any(p in n.split(".") for p in PRIVATE)]
    return uses


#: the modules of the compiled path and the Trainer's step (pyro_vae/objectives/iwae.py,
#: priors.py and amortized.py still read ``_get_traces``, ``_validate_args`` and
#: ``_setup_prototype`` themselves)
COMPILED_PATH = [
    "ops/compile.py",
    "ops/graph_passes.py",
    "ops/kernels.py",
    "objectives/compiled.py",
    "train/trainer.py",
    "eval/likelihood.py",
]


def test_private_names_are_read_in_the_compat_module_only():
    root = Path(pyro_vae.__file__).parent
    found = {name: u for name in COMPILED_PATH for u in [_private_uses(root / name)] if u}
    assert found == {}
    assert _private_uses(root / "_compat.py")  # the check sees them where they are


def test_the_installed_versions_are_the_tested_ones():
    assert _compat.compiled_supported(), _compat.installed()


def test_outside_the_tested_versions_the_compiled_path_refuses_and_the_eager_path_runs(monkeypatch):
    train = load_dataset("digits", "train", binarize="static")
    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,))
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    assert not _compat.compiled_supported()
    with pytest.raises(
        _compat.UnsupportedVersionError,
        match=r"tested with torch >=2.14,<2.15, and 2.13.0 is "
        r"installed; run without traced",
    ):
        TracedELBO(vae, vae.model, vae.guide, compile=False).trace(train.x[:10], num_data=1000)
    with pytest.raises(_compat.UnsupportedVersionError, match="run without traced"):
        Trainer(vae, train, batch_size=100, traced=True)
    trainer = Trainer(vae, train, batch_size=100)
    assert torch.isfinite(torch.tensor(trainer.step(train.x[:100])))


def test_a_traced_evaluation_outside_the_tested_versions_is_the_one_line_refusal(monkeypatch):
    """Not wrapped in importance sampling's shape message: the refusal is what the user sees."""
    from pyro_vae import log_likelihood

    train = load_dataset("digits", "train", binarize="static")
    torch.manual_seed(0)
    vae = build_vae((1, 8, 8), z_dim=2, hidden_dims=(8,))
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    with pytest.raises(_compat.UnsupportedVersionError) as info:
        log_likelihood(vae, train.x[:4], num_samples=4, traced=True)
    assert str(info.value).startswith("the compiled (traced) path is tested with torch >=2.14,<2.15, and 2.13.0")
