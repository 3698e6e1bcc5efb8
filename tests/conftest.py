"""Shared fixtures.

This file must not import ``statetree`` at module level: pytest loads it before
typeguard's plugin installs its import hook, and a package imported earlier is never
instrumented (tests/test_typeguard.py fails if that happens).
"""

import os
from typing import Any

import pytest

# Compile at XLA's lowest backend optimisation level: most of this suite's time is XLA
# compiling small programs once each, and -O0 halves that. The programs compute the same
# operations (no fast-math either way), so what the tests check is unchanged; only
# rounding between two differently built programs may differ in the last bits. Child
# processes inherit the flag (tests/_subprocess.py, tests/_multiprocess.py). Setting
# the level in XLA_FLAGS yourself overrides this one.
XLA_TEST_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAG}".strip()

# --- scheduling on two workers (`make test`: pytest -n 2 --dist loadgroup) ----------------
# Tests that share expensive state go to one worker as one unit: a module's tests (its
# module-scoped fixtures and compiled functions), a docs page's run and the module that
# checks what the page built (tests/_pages.py runs a page once per process), and the
# 8-device checks (one child process per session). Units then go out heaviest first, so
# the longest start early and the two workers finish together. The figures are rough
# CPU seconds on a 2-core machine; a stale one only costs balance, never a test.
HEAVY_UNITS = {
    "tests/test_benchmarks.py": 30,
    "tests/test_equinox_examples.py": 30,
    "tests/test_distributed.py": 25,
    "8 devices": 20,
    "tests/test_optimizer.py": 20,
    "tests/test_adapter_equinox.py": 20,
    "tests/test_equinox_idioms.py": 15,
    "tests/test_checkpoint.py": 12,
    "tests/test_dicts.py": 10,
    "tests/test_writes.py": 8,
    "tests/test_properties.py": 8,
    "tests/test_packed.py": 8,
    "page docs/recipes/scan-over-layers.md": 8,
}
# Modules whose tests are independent and cheap to set up: each test is its own unit.
SPLIT_MODULES = {"tests/test_docs.py"}


def _unit(item: pytest.Item) -> str | None:
    """The scheduling unit (xdist group) of ``item``; None: the test on its own."""
    if "eight_devices" in getattr(item, "fixturenames", ()):
        return "8 devices"
    module = item.nodeid.split("::")[0]
    page = getattr(getattr(item, "module", None), "PAGE", None)  # tests/test_recipes_*.py
    if getattr(item, "originalname", None) == "test_page_runs":
        page = item.callspec.params["page"]  # type: ignore[attr-defined]
    if page is not None:
        return f"page {os.path.relpath(page, item.config.rootpath)}"
    return None if module in SPLIT_MODULES else module


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    units = {item: _unit(item) for item in items}
    for item, unit in units.items():
        if unit is not None:
            item.add_marker(pytest.mark.xdist_group(unit))
    items.sort(key=lambda item: -HEAVY_UNITS.get(units[item] or "", 0))  # stable


CORPUS_NAMES = [
    "array",
    "dataclass",
    "dict",
    "dtypes",
    "empty",
    "list",
    "namedtuple",
    "nested_mixture",
    "none_and_statics",
    "numpy",
    "tuple",
    "variables",
]


@pytest.fixture(params=CORPUS_NAMES)
def corpus_tree(request: pytest.FixtureRequest) -> Any:
    """A fresh pytree of each kind in tests/_corpus.py."""
    from _corpus import CORPUS

    return CORPUS[request.param]()


@pytest.fixture(scope="session")
def eight_devices(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every 8-device check, run once in one child process
    (tests/multidevice/eight_devices.py): a test takes its own with ``.section(name)``;
    ``.directory`` holds what the checkpoint check saved."""
    from _subprocess import SCRIPTS, Sections

    directory = tmp_path_factory.mktemp("eight_devices")
    sections = Sections(SCRIPTS / "eight_devices.py", str(directory), devices=8, timeout=300)
    sections.directory = directory
    return sections
