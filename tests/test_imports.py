"""The import graph of statetree's core: no cycles, also through imports made inside
functions (a lazy import is a cycle postponed, not removed); and the tests mirror it: each
unit has its test module, the one that imports the unit's private modules."""

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


# ------------------------------------------------------------------ tests mirror the code
TESTS = Path(__file__).parent
# Units whose tests live under another name: packing (_packed and its views) is one unit.
_TESTED_AS = {"_views": "packed", "_version": None}
# A test module importing another unit's private module, and why no public name serves.
_REACHES = {
    ("test_checkpoint", "_graph"): "counts how often a restore flattens the live tree",
    ("test_jax", "_write"): "the door's answers as the write path's fast path uses them",
    ("test_write", "_jax"): "stands in for a JAX without the door's buffer attribute",
}


def _units() -> list[str]:
    """statetree's private modules and packages, by name (``_filters``, ``_write``)."""
    return sorted(
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if p.name.startswith("_")
        and p.name != "__init__.py"
        and (p.suffix == ".py" or (p / "__init__.py").exists())
    )


def test_every_unit_has_a_test_module_named_after_it() -> None:
    units = _units()
    assert {"_filters", "_write", "_graph"} <= set(units)  # the scan saw the units
    missing = [
        unit
        for unit in units
        if _TESTED_AS.get(unit, unit.lstrip("_")) is not None
        and not (TESTS / f"test_{_TESTED_AS.get(unit, unit.lstrip('_'))}.py").exists()
    ]
    assert not missing, f"units without tests/test_<unit>.py: {missing}"


def _private_units(path: Path) -> set[str]:
    """The statetree units whose private modules the test module ``path`` imports."""
    found = set()
    for target in _imports(path, "tests." + path.stem):
        parts = target.split(".")
        if len(parts) > 1 and parts[1].startswith("_") and parts[1] != "__version__":
            found.add(parts[1])
    return found


def _owns(unit: str, test: str) -> bool:
    """Whether ``test`` (a test module's name) holds tests of ``unit``: it is named after the
    unit, or, for a package, after one of its modules (``_graph/_nodes.py``: test_nodes)."""
    name = _TESTED_AS.get(unit) or unit.lstrip("_")
    return test == f"test_{name}" or (ROOT / unit / f"_{test.removeprefix('test_')}.py").exists()


def test_private_modules_are_imported_only_by_their_units_tests() -> None:
    assert "_write" in _private_units(TESTS / "test_write.py")  # the scan sees imports
    reaches = {
        (path.stem, unit)
        for path in sorted(TESTS.glob("test_*.py"))
        for unit in _private_units(path)
        if not _owns(unit, path.stem)
    }
    assert reaches == set(_REACHES), (
        f"test modules reaching other units' private modules: {sorted(reaches - set(_REACHES))}"
        f"; listed but gone: {sorted(set(_REACHES) - reaches)}"
    )
