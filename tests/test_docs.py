"""Every documentation page runs as written.

Each Markdown file under ``docs/`` (and README.md) is executed top to bottom, in one
namespace per page: every fenced ```` ```python ```` block runs, and a block fenced
```` ```output ```` right after it must match what that code printed (``...`` on a
line of its own, or inside a line, matches anything, as in doctest's ELLIPSIS).
Docstring examples in ``statetree`` run as doctests.
"""

import doctest
import importlib
import pathlib
import pkgutil

import pytest
from _pages import blocks, doc_pages, run_page, typecheck_tree

import statetree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pages that need several devices run in a subprocess from their own module's tests
# (tests/_subprocess.py), through `run_page` below; this process has one CPU device.
# docs/multi-process.md runs as a 2-process job in tests/test_distributed.py.
SUBPROCESS_PAGES = {ROOT / "docs" / "sharding.md", ROOT / "docs" / "multi-process.md"}
# docs/performance/ holds what `python -m benchmarks --docs` writes: a table, no code.
ALL_PAGES = doc_pages(ROOT)
PAGES = [p for p in ALL_PAGES if p not in SUBPROCESS_PAGES]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page: pathlib.Path) -> None:
    run_page(page)


# Code blocks scroll sideways past this width on the site's page column.
CODE_COLUMNS = 88


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_fits_the_column(page: pathlib.Path) -> None:
    long = [
        f"{page.name}:{line + i + 1}: {len(text)} columns"
        for lang, code, line in blocks(page.read_text())
        if lang not in ("output", "")
        for i, text in enumerate(code.splitlines())
        if len(text) > CODE_COLUMNS
    ]
    assert not long, f"code lines wider than {CODE_COLUMNS} columns:\n" + "\n".join(long)


def test_pages_cite_nothing_users_cannot_see() -> None:
    # The design spec lives outside the published docs; a page citing it sends readers
    # nowhere. (Lower-case `spec` is a word of its own: a PartitionSpec, a filter_spec.)
    citing = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in ALL_PAGES
        for n, text in enumerate(p.read_text().splitlines(), 1)
        if "SPEC" in text
    ]
    assert not citing, f"pages cite the spec: {citing}"


def test_site_loads_nothing_from_a_cdn() -> None:
    # Diagrams are inline SVG and the theme uses system fonts: the site works offline.
    config = (ROOT / "mkdocs.yml").read_text()
    assert "mermaid" not in config and "font: false" in config
    assert not [p for p in ALL_PAGES if "```mermaid" in p.read_text()]


def test_typecheck_tree_holds_every_page_and_the_installed_layout(
    tmp_path: pathlib.Path,
) -> None:
    # What `make typecheck` hands pyright for the docs: `statetree.adapters` importable
    # as installed, and each page's python blocks in order, in one module per page.
    typecheck_tree(tmp_path / "tc", ROOT)
    assert (tmp_path / "tc" / "statetree" / "adapters" / "dicts.py").is_file()
    assert (tmp_path / "tc" / "statetree" / "__init__.py").is_file()
    modules = sorted((tmp_path / "tc" / "docs").glob("*.py"))
    assert len(modules) == len(ALL_PAGES)
    concepts = (tmp_path / "tc" / "docs" / "docs__concepts.py").read_text()
    page_blocks = blocks((ROOT / "docs" / "concepts.md").read_text())
    python = [code for lang, code, _ in page_blocks if lang == "python"]
    positions = [concepts.index(code) for code in python]
    assert positions == sorted(positions) and len(positions) > 3


def _modules() -> list[str]:
    names = ["statetree"]
    for info in pkgutil.walk_packages(statetree.__path__, "statetree."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional extra (equinox, orbax) not installed
        pytest.skip(f"{name}: {e}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
