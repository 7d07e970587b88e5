"""The registry of experiments: what `distill experiment NAME` and `distill reproduce` read.

An experiment is one module of this package that defines `EXPERIMENT = Experiment(...)`:
`discover` finds it, so adding one touches no other file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from distill.experiments.common import Budget


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """One of the paper's experiments, as the command line and the reproduction see it.

    `run(b, *, tau, runs_dir, progress, mesh) -> result` takes a `Budget` and returns a
    JSON-ready dict; `runs_dir` None means `paths.runs_dir()`. `write(result, folder)` puts its
    results JSON, markdown table and figure into the folder and returns it.
    """

    name: str  # `distill experiment NAME`; the stage (and its folder) in `distill reproduce`
    help: str  # one line for `--help`
    run: Callable[..., dict]
    write: Callable[[dict, str | Path], Path]
    console_table: Callable[[dict], str]  # the markdown table `distill experiment` prints
    report_section: Callable[[dict], list[str]]  # its lines of reproduce's report.md
    order: int  # its place among the stages of a reproduction, and in `--help`
    suites: tuple[str, ...] = ("minatar", "atari")  # the `distill reproduce` suites that run it
    applies: Callable[[Budget], bool] = lambda b: True  # whether a suite's budget runs it
    # refuses (ConfigError) a budget it cannot run; `distill reproduce` asks every stage it will
    # run before the first starts, and `run` itself asks first
    check: Callable[[Budget], None] = lambda b: None
    mesh_axes: tuple[str, ...] = ("seeds", "data")  # the `--mesh` axes it splits; () none


def discover(package) -> dict[str, Experiment]:
    """Every `EXPERIMENT` defined by a module of `package`, by name, in their `order`."""
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        experiment = getattr(module, "EXPERIMENT", None)
        if isinstance(experiment, Experiment):
            found.append(experiment)
    found.sort(key=lambda e: (e.order, e.name))
    names = [e.name for e in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two experiments share a name: {names}")
    return {e.name: e for e in found}
