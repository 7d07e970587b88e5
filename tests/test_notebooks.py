"""The notebooks are committed clean and follow the house pattern; `make test` executes them
(pytest --nbmake notebooks/) at the smoke budget."""

from __future__ import annotations

import json
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
