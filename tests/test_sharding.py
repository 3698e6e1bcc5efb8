"""Sharding survives statetree: multi-device checks and the sharding recipe.

Both need 8 devices, so each runs in one subprocess (tests/_subprocess.py); the checks
themselves are in tests/multidevice/sharding_checks.py.
"""

from _subprocess import ROOT, SCRIPTS, run_script


def test_variables_keep_sharding_on_8_devices() -> None:
    out = run_script(SCRIPTS / "sharding_checks.py")
    assert "sharding checks passed (AxisType.Auto)" in out
    assert "sharding checks passed (AxisType.Explicit)" in out


def test_sharding_recipe_runs_on_8_devices() -> None:
    out = run_script(SCRIPTS / "run_page.py", str(ROOT / "docs" / "sharding.md"))
    assert "sharding.md ran" in out
