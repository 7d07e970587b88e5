"""Where shipped artefacts and run outputs live."""

from __future__ import annotations

import os
from pathlib import Path

from distill import envs


def repo_root() -> Path:
    """The checkout that holds `data/` (the package is installed editable from it)."""
    return Path(__file__).resolve().parent.parent


def shown(path: str | Path) -> str:
    """A path as a report names it: relative to the checkout when inside it (a report names no
    absolute path of the machine it ran on), else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def data_dir() -> Path:
    return Path(os.environ.get("DISTILL_DATA", repo_root() / "data"))


def runs_dir() -> Path:
    return Path(os.environ.get("DISTILL_RUNS", repo_root() / "runs"))


# Teacher sizes shipped with the repo: "small" (the MinAtar paper's network, data/teachers/<env>)
# and "large" (the over-parameterised `large-teacher`, data/teachers/<env>-large).
TEACHER_SIZES = ("small", "large")


def shipped_teacher(env_id: str, size: str = "small") -> Path:
    """data/teachers/<env id with '/' as '-'>, with '-large' for a large teacher: the trained
    teacher of that size shipped with the repo."""
    if size not in TEACHER_SIZES:
        raise ValueError(f"teacher size {size!r}: choose one of {TEACHER_SIZES}")
    suffix = "" if size == "small" else f"-{size}"
    return data_dir() / "teachers" / (envs.spec(env_id).safe_name + suffix)


def budget(default: str = "quick") -> str:
    """The notebook/test budget from DISTILL_BUDGET: 'smoke', 'quick' or 'full'."""
    value = os.environ.get("DISTILL_BUDGET", default)
    if value not in ("smoke", "quick", "full"):
        raise ValueError(f"DISTILL_BUDGET={value!r}: choose smoke, quick or full")
    return value


def mesh_spec() -> str | None:
    """The notebooks' device mesh from DISTILL_MESH (e.g. 'seeds=all'; see distill.sharding);
    None when unset: one device."""
    return os.environ.get("DISTILL_MESH") or None
