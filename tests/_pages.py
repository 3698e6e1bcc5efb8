"""Running documentation pages: every ```python block executes, top to bottom, in one
namespace per page; an ```output block right after one must match what it printed
(``...`` matches anything, as in doctest's ELLIPSIS).

A page runs once per process: the docs tests and a page's own checks
(tests/test_recipes_*.py) share the namespace of that one run.
"""

import contextlib
import doctest
import io
import pathlib
import re

# Pages whose code blocks are all illustration (no runnable code of their own).
NO_CODE_PAGES = {"README.md", "api.md"}
_RAN: dict[pathlib.Path, dict[str, object]] = {}

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


def run_page(page: pathlib.Path) -> dict[str, object]:
    """Run every python block of ``page`` (once per process), compare the output
    blocks, and return the page's namespace (for tests that check what it built)."""
    page = page.resolve()
    if page not in _RAN:
        _RAN[page] = _execute(page)
    return _RAN[page]


def _execute(page: pathlib.Path) -> dict[str, object]:
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
    if page.name not in NO_CODE_PAGES:
        assert ran, f"{page.name} has no python blocks to run"
    return namespace
