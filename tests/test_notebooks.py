"""The notebooks are committed clean and follow the house pattern; `make test` executes them
(pytest --nbmake notebooks/) at the smoke budget, and `make test-notebooks` at the default (quick)
budget, the one a student opening Jupyter gets (`quick_budget`, excluded from `make test`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: strip outputs before committing"
            assert cell.get("execution_count") is None, f"{path.name}: execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_pattern(path):
    assert re.fullmatch(r"\d\d_[a-z]+(_[a-z]+)*\.ipynb", path.name)
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown", "a notebook opens with prose"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "import" in "".join(code[0]["source"]), "the first code cell imports"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "paths.budget()" in "".join(params[0]["source"])
    assert "assert" in "".join(code[-1]["source"]), "the last cell asserts what it claims"


@pytest.mark.quick_budget
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_passes_its_checks_at_the_quick_budget(path, monkeypatch):
    """Every notebook, run as a student runs it (DISTILL_BUDGET unset: quick), ends on its own
    checks passing. Minutes per notebook: `make test-notebooks` runs them, `make test` does not."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("DISTILL_BUDGET", raising=False)  # the kernel inherits this environment
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute(env=dict(os.environ))
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "all checks passed" in printed, f"{path.name}: its checks did not all run"
