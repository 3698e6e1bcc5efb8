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
from _pages import run_page

import statetree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pages that need several devices run in a subprocess from their own module's tests
# (tests/_subprocess.py), through `run_page` below; this process has one CPU device.
# docs/multi-process.md runs as a 2-process job in tests/test_distributed.py.
SUBPROCESS_PAGES = {ROOT / "docs" / "sharding.md", ROOT / "docs" / "multi-process.md"}
# docs/performance/ holds what `python -m benchmarks --docs` writes: a table, no code.
GENERATED = ROOT / "docs" / "performance"
ALL_PAGES = [
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if GENERATED not in p.parents),
    ROOT / "README.md",
]
PAGES = [p for p in ALL_PAGES if p not in SUBPROCESS_PAGES]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page: pathlib.Path) -> None:
    run_page(page)


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
