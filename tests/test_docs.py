"""Every documentation page runs as written.

Each Markdown file under ``docs/`` (and README.md) is executed top to bottom, in one
namespace per page: every fenced ```` ```python ```` block runs, and a block fenced
```` ```output ```` right after it must match what that code printed (``...`` on a
line of its own, or inside a line, matches anything, as in doctest's ELLIPSIS).
Docstring examples in ``statetree`` run as doctests.
"""

import contextlib
import doctest
import importlib
import io
import pathlib
import pkgutil
import re

import pytest

import statetree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Pages that need several devices run in a subprocess from their own module's tests
# (tests/_subprocess.py), through `run_page` below; this process has one CPU device.
SUBPROCESS_PAGES = {ROOT / "docs" / "sharding.md"}
ALL_PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
PAGES = [p for p in ALL_PAGES if p not in SUBPROCESS_PAGES]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of each fenced block."""
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)
    ]


def matches(expected: str, got: str) -> bool:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    return checker.check_output(expected.strip() + "\n", got.strip() + "\n", flags)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page: pathlib.Path) -> None:
    run_page(page)


def run_page(page: pathlib.Path) -> None:
    """Run every python block of ``page`` and compare the output blocks."""
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    last_output: str | None = None
    last_line = 0
    ran = 0
    for lang, code, line in blocks(page.read_text()):
        if lang == "python":
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            last_output, last_line = buffer.getvalue(), line
            ran += 1
        elif lang == "output":
            assert last_output is not None, f"{page.name}:{line}: output block with no code"
            assert matches(code, last_output), (
                f"{page.name}:{line}: the block at line {last_line} printed\n"
                f"{last_output}\nbut the page shows\n{code}"
            )
            last_output = None
    if page.name != "README.md":
        assert ran, f"{page.name} has no python blocks to run"


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
