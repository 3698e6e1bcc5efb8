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


def doc_pages(root: pathlib.Path) -> list[pathlib.Path]:
    """Every page written by hand: docs/**/*.md and README.md, without the pages the
    benchmark run generates (docs/performance/)."""
    generated = root / "docs" / "performance"
    pages = sorted(p for p in (root / "docs").rglob("*.md") if generated not in p.parents)
    return [*pages, root / "README.md"]


def extract(dest: pathlib.Path, pages: list[pathlib.Path], root: pathlib.Path) -> None:
    """Write each page's python blocks, in order, to one module per page under
    ``dest/docs/`` (for pyright: the blocks of a page share one namespace, as when the
    tests run them). Each block starts with a comment naming its page and line."""
    out = dest / "docs"
    out.mkdir(parents=True, exist_ok=True)
    for page in pages:
        parts = [f"# Generated from {page.relative_to(root)} by tests/_pages.py.\n"]
        for lang, code, line in blocks(page.read_text()):
            if lang == "python":
                parts.append(f"\n# {page.relative_to(root)}:{line + 1}\n{code}")
        name = str(page.relative_to(root).with_suffix("")).replace("/", "__").replace("-", "_")
        (out / f"{name}.py").write_text("".join(parts))


def typecheck_tree(dest: pathlib.Path, root: pathlib.Path) -> None:
    """Lay out ``dest`` for pyright to check the docs' code as a user's would be: the
    package as installed (``statetree`` with ``statetree.adapters`` inside, made of
    links to the sources, since pyright cannot follow the editable install's import
    hook), one module per docs page, and the examples."""
    import json
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    package = dest / "statetree"
    package.mkdir(parents=True)
    for entry in (root / "statetree").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "adapters").symlink_to(root / "adapters")
    (dest / "examples").symlink_to(root / "examples")  # they import statetree.adapters
    extract(dest, doc_pages(root), root)
    config = {
        "include": ["docs", "examples"],
        "venvPath": str(root),
        "venv": ".venv",
        "pythonVersion": "3.11",
        "typeCheckingMode": "standard",
        # Pages print values as they go and define a function again when the text
        # moves on to a variant of it: neither is a mistake there.
        "reportUnusedExpression": "none",
        "reportRedeclaration": "none",
    }
    (dest / "pyrightconfig.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":  # python tests/_pages.py DEST: what `make typecheck` checks
    import sys

    typecheck_tree(pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(__file__).parents[1])
