"""The API reference is complete and the documentation site builds.

``docs/api.md`` lists one ``::: statetree.NAME`` line per public name (mkdocstrings renders
each from its docstring). A public name is every name in ``dir(statetree)`` that does not
start with ``_`` and is not a module. Adding a public name means adding a docstring and one
line to ``docs/api.md``; these tests say which are missing.
"""

import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import statetree

ROOT = pathlib.Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
ENTRY = re.compile(r"^:::\s+statetree\.(\w+)\s*$", re.M)
# Adapters are documented from their source folder (`adapters/`, shipped as
# `statetree.adapters`): mkdocstrings reads sources and cannot follow the package-dir map.
ADAPTER_ENTRY = re.compile(r"^:::\s+adapters\.(\w+)\.(\w+)\s*$", re.M)
ADAPTERS = ("equinox", "dicts")


def public_names() -> list[str]:
    return sorted(
        name
        for name in dir(statetree)
        if not name.startswith("_") and not isinstance(getattr(statetree, name), types.ModuleType)
    )


def documented_names() -> list[str]:
    return ENTRY.findall(API_PAGE.read_text())


def own_docstring(obj: object) -> str:
    """The object's own docstring: a class without one does not borrow its base's."""
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def test_public_classes_print_as_statetree() -> None:
    classes = [getattr(statetree, n) for n in public_names()]
    classes = [c for c in classes if isinstance(c, type)]
    assert len(classes) > 15
    wrong = [f"{c.__module__}.{c.__qualname__}" for c in classes if c.__module__ != "statetree"]
    assert not wrong, (
        f'{wrong} print with their private module. Add `X.__module__ = "statetree"` at the '
        "end of the module that defines each."
    )
    assert repr(statetree.AliasError) == "<class 'statetree.AliasError'>"


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib import metadata

    assert statetree.__version__ == metadata.version("statetree")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", statetree.__version__)


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_public_names_are_declared_and_documented(name: str) -> None:
    module = importlib.import_module(f"statetree.adapters.{name}")
    public = module.__all__
    assert public and all(hasattr(module, n) for n in public), public
    assert {"jax", "np", "Any", "st"}.isdisjoint(public)
    documented = [n for m, n in ADAPTER_ENTRY.findall(API_PAGE.read_text()) if m == name]
    missing = sorted(set(public) - set(documented))
    assert not missing, (
        f"docs/api.md has no entry for statetree.adapters.{name}: {missing}. Add e.g.\n"
        + "\n".join(f"::: adapters.{name}.{n}" for n in missing)
    )
    stale = sorted(set(documented) - set(public))
    assert not stale, f"docs/api.md documents names not in {name}.__all__: {stale}"
    callables = [n for n in public if callable(getattr(module, n))]
    undocumented = [n for n in callables if not own_docstring(getattr(module, n))]
    assert not undocumented, f"statetree.adapters.{name}: no docstring for {undocumented}"


def test_api_page_has_only_reference_entries() -> None:
    # The page is generated from docstrings; a leftover code block would show as a
    # stray example above the reference.
    assert "```" not in API_PAGE.read_text()


def test_public_names_are_found() -> None:
    # Guards the two tests below against passing on an empty list.
    assert {"Variable", "split", "merge", "mutable", "freeze"} <= set(public_names())
    assert "adapters" not in public_names()


@pytest.mark.parametrize("name", public_names())
def test_public_name_has_docstring(name: str) -> None:
    doc = own_docstring(getattr(statetree, name))
    assert doc, (
        f"statetree.{name} has no docstring of its own. Write one (Google style: a summary "
        "line, Args/Returns/Raises where they apply, and an Examples section of >>> lines)."
    )


def test_every_public_name_is_in_api_page() -> None:
    missing = sorted(set(public_names()) - set(documented_names()))
    assert not missing, (
        f"docs/api.md has no entry for: {', '.join(missing)}. Add one line per name, e.g.\n"
        + "\n".join(f"::: statetree.{n}" for n in missing)
    )


def test_api_page_names_exist() -> None:
    names = documented_names()
    stale = sorted(set(names) - set(public_names()))
    assert not stale, f"docs/api.md documents names statetree does not export: {stale}"
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"docs/api.md lists these names more than once: {twice}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs extra (mkdocs, mkdocstrings) is not installed",
)
def test_site_builds_strict(tmp_path: pathlib.Path) -> None:
    # --strict turns every warning into a failure: a nav entry without a page, a broken
    # link, a docstring mkdocstrings cannot parse.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (tmp_path / "api" / "index.html").exists()
