"""The dependencies: ranges in pyproject.toml (no exact pins, so that pip keeps a supported
torch that is already installed), one tested point inside them in constraints.txt."""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
RANGED = ("torch", "torchvision", "pyro-ppl")


def declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def pinned():
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower(): next(iter(r.specifier)).version for r in pins}


def test_torch_torchvision_and_pyro_are_ranges_with_an_upper_bound():
    deps = declared()
    for name in RANGED:
        spec = deps[name].specifier
        assert all(s.operator not in ("==", "===", "~=") for s in spec), (name, str(spec))
        assert any(s.operator == "<" for s in spec) and any(s.operator == ">=" for s in spec), (name, str(spec))


def test_the_constraints_pin_every_dependency_inside_its_declared_range():
    deps, pins = declared(), pinned()
    for name, req in deps.items():
        assert name.lower() in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name.lower()]), (name, pins[name.lower()], str(req.specifier))


def test_the_installed_torch_and_pyro_are_inside_the_declared_ranges():
    deps = declared()
    for name in RANGED:
        installed = version(name).split("+")[0]
        assert deps[name].specifier.contains(installed), (name, installed, str(deps[name].specifier))
