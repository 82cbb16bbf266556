"""``import pyro_vae`` stays light: matplotlib, ArviZ and scikit-learn load only when a
module that needs them is imported (plots, the NUTS checks, the digits data), and
:mod:`pyro_vae.eval` imports its ArviZ module on first use."""

import json
import subprocess
import sys

HEAVY = ("matplotlib", "arviz", "sklearn")


def test_import_pyro_vae_loads_no_plotting_or_arviz_or_sklearn():
    code = f"""
import json, sys
import pyro_vae, pyro_vae.eval
light = [m for m in {HEAVY!r} if m in sys.modules]
from pyro_vae.eval import posterior
print(json.dumps(dict(light=light, arviz="arviz" in sys.modules,
                      same=pyro_vae.eval.nuts_posterior is posterior.nuts_posterior)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == dict(light=[], arviz=True, same=True)


def _package_imports():
    """``(module path, imported module, names)`` for every ``from ... import`` inside pyro_vae,
    the module resolved to its dotted name."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pyro_vae"
    for path in root.rglob("*.py"):
        package = list(path.relative_to(root.parent).parts[:-1])  # what a relative import of level 1 names
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                yield path.relative_to(root.parent).as_posix(), module, [a.name for a in node.names]


def test_eval_imports_nothing_of_train_and_no_module_imports_anothers_private_names():
    """The layering the package states: evaluation does not depend on training, and a name
    with a leading underscore is used only in its own module (``_compat``, the one module of
    private torch and Pyro names, is imported as a module)."""
    eval_to_train, private = [], []
    for path, module, names in _package_imports():
        if path.startswith("pyro_vae/eval/") and module.startswith("pyro_vae.train"):
            eval_to_train.append(f"{path}: {module}")
        if module.startswith("pyro_vae"):
            private += [f"{path}: {module}.{n}" for n in names if n.startswith("_") and n != "_compat"]
    assert eval_to_train == []
    assert private == []
