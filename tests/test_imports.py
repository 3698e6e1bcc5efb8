"""The import graph of statetree's core: no cycles, also through imports made inside
functions (a lazy import is a cycle postponed, not removed)."""

import ast
from pathlib import Path

import statetree

ROOT = Path(statetree.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The statetree modules ``path`` imports, anywhere in it (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("statetree"):
                continue
            found.add(target)
            # `from . import _graph` names a module; `from ._x import y` a name.
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("statetree"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # The package's own __init__ re-exports everything: it is the door, not a node
        # of the engine, and every module is "inside" it.
        if name == "statetree":
            continue
        targets = {t for t in _imports(path, name) if t in modules and t != "statetree"}
        # A subpackage importing its own submodules (its re-exports, `from . import _x
        # as x`, which names the package itself too) is no cycle.
        edges[name] = {t for t in targets if t != name and not t.startswith(name + ".")}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


# Known cycles, each to be broken by its owner; listed edges are left out of the check.
_KNOWN: set[tuple[str, str]] = set()


def test_no_import_cycle_among_statetree_modules() -> None:
    edges = _graph()
    assert len(edges) > 10  # the scan saw the modules
    for source, target in _KNOWN:
        assert target in edges[source], f"{source} -> {target} is gone: drop it from _KNOWN"
        edges[source].discard(target)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
