"""pyproject.toml declares ranges; constraints.txt is the exact set the tests ran with.

Nothing is installed here: the check is that every tested version lies inside the
range rayeffi declares, so ``pip install -e '.[test]' -c constraints.txt`` can resolve.
"""

from __future__ import annotations

from pathlib import Path

import pytest

requirements = pytest.importorskip("packaging.requirements")
utils = pytest.importorskip("packaging.utils")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> dict[str, list]:
    """Package name -> every requirement on it, core and extras alike."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    declared: dict[str, list] = {}
    for line in lines:
        requirement = requirements.Requirement(line)
        declared.setdefault(utils.canonicalize_name(requirement.name), []).append(requirement)
    return declared


def _tested() -> dict[str, str]:
    """Package name -> the version constraints.txt pins."""
    tested = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            tested[utils.canonicalize_name(name)] = version
    return tested


def test_every_declared_package_has_a_tested_version_inside_its_ranges():
    tested = _tested()
    for name, declared in _declared().items():
        assert name in tested, f"{name} is a dependency but constraints.txt pins no tested version of it"
        for requirement in declared:
            assert requirement.specifier.contains(tested[name], prereleases=True), (
                f"constraints.txt pins {name}=={tested[name]}, outside pyproject.toml's {requirement}"
            )


def test_dependencies_are_ranges_not_pins():
    for name, declared in _declared().items():
        for requirement in declared:
            assert not any(spec.operator == "==" for spec in requirement.specifier), (
                f"pyproject.toml pins {requirement}: declare a range, put the exact version in constraints.txt"
            )


def test_torch_stays_below_2_14():
    # an uncapped torch resolves to a newer CUDA build with gigabytes of packages
    (torch,) = _declared()["torch"]
    assert not torch.specifier.contains("2.14.0") and torch.specifier.contains("2.13.0")
    assert _tested()["torch"] == "2.13.0"
