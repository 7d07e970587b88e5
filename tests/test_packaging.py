"""pyproject.toml and environment.yml must install the same packages with the same ranges."""

import pathlib
import re
import tomllib

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Entries of environment.yml that are not packages of the project.
NOT_PACKAGES = {"python", "pip"}


def _split(requirement: str) -> tuple[str, str]:
    """'Gymnasium_x>=1.1, <1.4' -> ('gymnasium-x', '>=1.1,<1.4'), names normalised as PEP 503."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*", requirement)
    assert m, f"cannot parse requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    return name, m.group(2).replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return dict(_split(r) for r in reqs)


def _environment() -> dict[str, str]:
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    reqs = []
    for dep in deps:
        if isinstance(dep, dict):
            reqs += [r for r in dep["pip"] if not r.startswith("-e")]
        else:
            reqs.append(dep)
    out = {}
    for r in reqs:
        name, spec = _split(r)
        if name not in NOT_PACKAGES:
            # conda's 'pkg=1.2' is a pin on 1.2.*; none of ours use it, so keep the text as is.
            out[name] = spec
    return out


def test_split():
    assert _split("Gymnasium_X >=1.1, <1.4") == ("gymnasium-x", ">=1.1,<1.4")
    assert _split("ale.py[extra]>=0.11") == ("ale-py", ">=0.11")
    assert _split("six") == ("six", "")


def test_environment_installs_the_package_itself():
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip


def test_same_packages():
    pyproject, environment = _pyproject(), _environment()
    assert set(pyproject) == set(environment), (
        f"only in pyproject.toml: {sorted(set(pyproject) - set(environment))}; "
        f"only in environment.yml: {sorted(set(environment) - set(pyproject))}"
    )


def _shared_ranges():
    pyproject, environment = _pyproject(), _environment()
    return sorted(n for n in pyproject if pyproject[n] and environment.get(n))


def test_jax_and_gymnasium_have_ranges_in_both():
    # gymnax caps both; a missing cap in either file would let the solver pick a broken pair.
    shared = _shared_ranges()
    assert "jax" in shared and "gymnasium" in shared
    for name in ("jax", "gymnasium"):
        assert "<" in _pyproject()[name], f"{name} needs an upper bound"


@pytest.mark.parametrize("name", _shared_ranges())
def test_version_ranges_agree(name):
    assert SpecifierSet(_pyproject()[name]) == SpecifierSet(_environment()[name])


def test_environment_python_satisfies_requires_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1].lstrip("=")
    assert SpecifierSet(requires).contains(version), (python, requires)
