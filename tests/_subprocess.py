"""Run a Python script in a fresh interpreter that sees 8 CPU devices.

JAX reads ``XLA_FLAGS`` once, when its backend starts, and the pytest process has long
started it with one CPU device. Multi-device checks therefore run as scripts in a child
process with ``--xla_force_host_platform_device_count=8``. Each child pays JAX's start-up
(a few seconds), so the 8-device checks all run in one child
(``tests/multidevice/eight_devices.py``, once per session: :class:`Sections`), each
reported by its own test.

The child installs typeguard's import hook for ``statetree``, as the pytest plugin does
in this process, so the public API's annotations are checked there too.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "multidevice"
DEVICES = 8

# Runs in the child: type-check statetree, then run the script as `__main__`.
_BOOT = """
import runpy, sys
from typeguard import install_import_hook
install_import_hook(["statetree"])
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def child_env(devices: int = DEVICES) -> dict[str, str]:
    """The environment of a child process that sees ``devices`` CPU devices."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def child_command(script: pathlib.Path | str, *args: str) -> list[str]:
    """The command line that runs ``script`` (with ``args``) under typeguard."""
    return [sys.executable, "-c", _BOOT, str(script), *args]


class Sections:
    """The output of a script that frames each of its checks as ``=== NAME`` ... then
    ``=== NAME: passed`` or ``=== NAME: FAILED`` (tests/multidevice/eight_devices.py),
    run once; each test asks for its own check with :meth:`section`."""

    def __init__(
        self, script: pathlib.Path, directory: pathlib.Path, *, devices: int, timeout: float
    ) -> None:
        self.name = script.name
        self.directory = directory  # the script's one argument: where it writes files
        self.devices = devices
        proc = subprocess.run(
            child_command(script, str(directory)),
            env=child_env(devices),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.returncode = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        frames = re.finditer(
            r"^=== (.+?)\n(.*?)^=== \1: (passed|FAILED)$", proc.stdout, re.M | re.S
        )
        self.sections = {m.group(1): (m.group(3) == "passed", m.group(2)) for m in frames}

    def section(self, name: str) -> str:
        """What the check ``name`` printed; fails the calling test if that check failed
        (with its traceback) or never finished (with the whole output)."""
        if name not in self.sections:
            pytest.fail(
                f"{self.name}: the check {name!r} did not finish in the subprocess with "
                f"{self.devices} devices (exit code {self.returncode}).\n--- stdout ---\n"
                f"{self.stdout}\n--- stderr ---\n{self.stderr}",
                pytrace=False,
            )
        passed, out = self.sections[name]
        if not passed:
            pytest.fail(
                f"{self.name}: the check {name!r} failed in the subprocess with "
                f"{self.devices} devices:\n{out}",
                pytrace=False,
            )
        return out
