"""The suite's own scheduling (tests/conftest.py): units, and the xdist method it uses."""

import pytest
from conftest import unit, xdist_scheduler_problem


def test_units_group_modules_pages_and_eight_device_checks() -> None:
    assert unit("tests/test_split.py::test_a") == unit("tests/test_split.py::test_b")
    assert unit("tests/test_split.py::test_a") == "tests/test_split.py"
    assert unit("tests/test_sharding.py::test_sharding_recipe_runs_on_8_devices") == (
        unit("tests/test_packed.py::test_named_shardings_across_devices")
    )
    # a docs page's run and the module that checks what it built share one unit
    assert unit("tests/test_docs.py::test_page_runs[docs/recipes/scan-over-layers.md]") == (
        unit("tests/test_recipes_scan.py::test_anything")
    )
    # independent docs tests are each their own unit
    assert unit("tests/test_docs.py::test_x") != unit("tests/test_docs.py::test_y")


def test_installed_xdist_still_groups_through_split_scope() -> None:
    from xdist.scheduler import LoadScopeScheduling

    assert xdist_scheduler_problem(LoadScopeScheduling) == ""


def test_a_changed_xdist_stops_the_run_with_the_fix() -> None:
    class Renamed:
        def schedule(self) -> None: ...

    class Regrouped:
        def _split_scope(self, nodeid: str) -> str:
            return nodeid

        def schedule(self) -> None: ...

    assert "no longer has the method _split_scope" in xdist_scheduler_problem(Renamed)
    problem = xdist_scheduler_problem(Regrouped)
    assert "no longer groups tests by _split_scope" in problem
    assert "--dist load" in problem  # and it names the way to run meanwhile


def test_the_scheduler_hook_refuses_a_changed_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    import xdist.scheduler
    from conftest import pytest_xdist_make_scheduler

    class Renamed:
        def schedule(self) -> None: ...

    class Config:
        def getvalue(self, name: str) -> str:
            return "loadgroup"

    monkeypatch.setattr(xdist.scheduler, "LoadScopeScheduling", Renamed)
    with pytest.raises(pytest.UsageError, match="cannot group tests with it"):
        pytest_xdist_make_scheduler(Config(), None)  # type: ignore[arg-type]
