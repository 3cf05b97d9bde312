"""The install files agree: pyproject.toml, constraints.txt and environment.yml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# pip name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "opencv-python-headless": "opencv"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_names_the_same_runtime_packages_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip = [r for d in env["dependencies"] if isinstance(d, dict) for r in d.get("pip", [])]
    from_pip = {_name(r) for r in pip if r != "-e ."}  # packages only PyPI has
    runtime = {CONDA_NAMES.get(_name(r), _name(r)) for r in _pyproject()["project"]["dependencies"]}
    assert conda | from_pip == runtime and not conda & from_pip
    assert "-e ." in pip


def test_constraints_pin_every_dependency_and_the_working_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = _pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    missing = [_name(r) for r in wanted if _name(r).replace("_", "-") not in pins]
    assert missing == []
    # DESIGN section 6: the local torch 2.13 CPU wheel has no working torchvision here.
    assert pins["torch"] == "2.14.1" and pins["torchvision"].startswith("0.29.")
