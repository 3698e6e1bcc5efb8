"""Shared fixtures.

This file must not import ``statetree`` at module level: pytest loads it before
typeguard's plugin installs its import hook, and a package imported earlier is never
instrumented (tests/test_typeguard.py fails if that happens).
"""

import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _subprocess import Sections

# Cache compiled bytecode even where the environment says not to (PYTHONDONTWRITEBYTECODE):
# typeguard instruments statetree at every import, and each child process (the 8-device
# checks, the multi-process job, the examples) then loads the instrumented modules from
# __pycache__ (ignored by git) in about 1.8 s instead of compiling them again in 4.9 s.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

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
# 8-device checks (one child process per session). Units go out heaviest first, so the
# longest start early and the two workers finish together.
#
# pytest-xdist 3.8's own loadgroup cannot group on pytest 9 (it renames a node id that
# pytest no longer reads), so `--dist loadgroup` gets the scheduler below, which groups
# by node id alone: the controller process collects no tests.

# Rough CPU seconds of the heaviest units on a 2-core machine; a stale figure only costs
# balance, never a test.
HEAVY_UNITS = {
    "tests/test_distributed.py": 90,
    "tests/test_benchmarks.py": 30,
    "tests/test_equinox_examples.py": 45,
    "8 devices": 20,
    "tests/test_optimizer.py": 20,
    "tests/test_equinox_subclasses.py": 30,
    "tests/test_equinox_idioms.py": 15,
    "tests/test_restore.py": 15,
    "tests/test_equinox_training.py": 12,
    "tests/test_equinox_convert.py": 10,
    "tests/test_equinox_shared.py": 9,
    "tests/test_equinox_state.py": 8,
    "tests/test_checkpoint.py": 12,
    "tests/test_graph.py": 12,
    "tests/test_dicts.py": 10,
    "tests/test_write.py": 8,
    "tests/test_properties.py": 8,
    "tests/test_packed.py": 8,
    "page docs/recipes/scan-over-layers.md": 8,
    "page docs/recipes/random-keys.md": 12,
    "tests/test_rng.py": 9,
}
# The tests that use the `eight_devices` fixture (checked at collection).
EIGHT_DEVICE_TESTS = {
    "tests/test_checkpoint.py::test_restore_across_device_layouts",
    "tests/test_packed.py::test_named_shardings_across_devices",
    "tests/test_sharding.py::test_sharding_recipe_runs_on_8_devices",
    "tests/test_sharding.py::test_variables_keep_sharding_on_8_devices",
}
# Test modules that check what a docs page built (their PAGE; checked at collection).
PAGE_MODULES = {
    "tests/test_recipes_scan.py": "docs/recipes/scan-over-layers.md",
    "tests/test_recipes_training.py": "docs/recipes/training-loop.md",
    "tests/test_recipes_rng.py": "docs/recipes/random-keys.md",
}
# Modules whose tests are independent and cheap to set up: each test is its own unit.
SPLIT_MODULES = {"tests/test_docs.py"}


def unit(nodeid: str) -> str:
    """The scheduling unit of the test ``nodeid``."""
    if nodeid in EIGHT_DEVICE_TESTS:
        return "8 devices"
    module, _, name = nodeid.partition("::")
    if module in PAGE_MODULES:
        return f"page {PAGE_MODULES[module]}"
    if module == "tests/test_docs.py" and name.startswith("test_page_runs["):
        return f"page {name.removeprefix('test_page_runs[').removesuffix(']')}"
    return nodeid if module in SPLIT_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::")[0]
        uses_eight = "eight_devices" in getattr(item, "fixturenames", ())
        if uses_eight != (item.nodeid in EIGHT_DEVICE_TESTS):
            raise pytest.UsageError(
                f"{item.nodeid} {'uses' if uses_eight else 'does not use'} the eight_devices "
                "fixture: list exactly those tests in EIGHT_DEVICE_TESTS (tests/conftest.py), "
                "so that they share one worker and one 8-device process."
            )
        page = getattr(getattr(item, "module", None), "PAGE", None)
        if page is not None and PAGE_MODULES.get(module) != os.path.relpath(page, config.rootpath):
            raise pytest.UsageError(
                f"{module} checks the page {page}: name it in PAGE_MODULES (tests/conftest.py), "
                "so that the page runs once, on the worker that runs these tests."
            )
    items.sort(key=lambda item: -HEAVY_UNITS.get(unit(item.nodeid), 0))  # stable


def xdist_scheduler_problem(scheduler: type) -> str:
    """Why ``scheduler`` (xdist's LoadScopeScheduling) can no longer carry the units
    above, or "" while it can. The override below relies on one private method of
    xdist's: ``schedule`` groups the collected node ids by ``self._split_scope(nodeid)``.
    Checked at every ``--dist loadgroup`` run and by tests/test_conftest.py, so an xdist
    release that changes it stops the run with this message instead of silently
    scheduling every test on its own (and running each docs page twice)."""
    import inspect

    split = getattr(scheduler, "_split_scope", None)
    if split is None or list(inspect.signature(split).parameters) != ["self", "nodeid"]:
        reason = "no longer has the method _split_scope(self, nodeid)"
    elif "self._split_scope(" not in inspect.getsource(scheduler.schedule):
        reason = "no longer groups tests by _split_scope in schedule()"
    else:
        return ""
    return (
        f"pytest-xdist's {scheduler.__name__} {reason}: tests/conftest.py's unit "
        "scheduler cannot group tests with it. Read the installed xdist's "
        "xdist/scheduler/loadscope.py, adapt UnitScheduling in tests/conftest.py, or run "
        "with `--dist load` meanwhile (the suite passes, only slower)."
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    problem = xdist_scheduler_problem(LoadScopeScheduling)
    if problem:
        raise pytest.UsageError(problem)

    class UnitScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, a scope being a unit above, in collection order."""

        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

    config.option.loadscopereorder = False  # keep the heaviest-first order
    return UnitScheduling(config, log)


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
def eight_devices(tmp_path_factory: pytest.TempPathFactory) -> "Sections":
    """Every 8-device check, run once in one child process
    (tests/multidevice/eight_devices.py): a test takes its own with ``.section(name)``;
    ``.directory`` holds what the checkpoint check saved."""
    from _subprocess import SCRIPTS, Sections

    directory = tmp_path_factory.mktemp("eight_devices")
    return Sections(SCRIPTS / "eight_devices.py", directory, devices=8, timeout=300)
