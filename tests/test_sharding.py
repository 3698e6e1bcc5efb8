"""Sharding survives statetree: multi-device checks and the sharding recipe.

Both need 8 devices: they run in the session's one 8-device subprocess (the
``eight_devices`` fixture, tests/multidevice/eight_devices.py); the checks themselves
are in tests/multidevice/sharding_checks.py.
"""

from typing import Any


def test_variables_keep_sharding_on_8_devices(eight_devices: Any) -> None:
    out = eight_devices.section("sharding checks")
    assert "sharding checks passed (AxisType.Auto)" in out
    assert "sharding checks passed (AxisType.Explicit)" in out


def test_sharding_recipe_runs_on_8_devices(eight_devices: Any) -> None:
    out = eight_devices.section("sharding.md")
    assert "sharding.md ran" in out
