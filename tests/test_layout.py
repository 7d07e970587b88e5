"""The package's shape: no import cycle (counting imports inside functions), no oversized module."""

from __future__ import annotations

import ast
from pathlib import Path

import distill

PACKAGE = Path(distill.__file__).parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `name` imports anywhere in its file."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                deps.add(full if full in known else node.module)
    return {d for d in deps if d in known and d != name and not name.startswith(d + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(n: str, stack: list[str]) -> list[str] | None:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state:
                found = visit(d, [*stack, d])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_import_cycle():
    mods = _modules()
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    assert "distill.envs" in graph["distill.families"]  # the graph sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_oversized():
    sizes = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert max(sizes.values()) <= MAX_LINES, {n: s for n, s in sizes.items() if s > MAX_LINES}
