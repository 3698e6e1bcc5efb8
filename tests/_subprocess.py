"""Run a Python script in a fresh interpreter that sees 8 CPU devices.

JAX reads ``XLA_FLAGS`` once, when its backend starts, and the pytest process has long
started it with one CPU device. Multi-device checks therefore run as scripts in a child
process with ``--xla_force_host_platform_device_count=8``. Each child pays JAX's start-up
(a few seconds), so checks are grouped into few scripts (``tests/multidevice/``).

The child installs typeguard's import hook for ``statetree``, as the pytest plugin does
in this process, so the public API's annotations are checked there too.
"""

import os
import pathlib
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


def run_script(
    script: pathlib.Path | str, *args: str, devices: int = DEVICES, timeout: float = 180
) -> str:
    """Run ``script`` in a child with ``devices`` CPU devices; return what it printed.

    A non-zero exit fails the calling test with the child's whole output, so an
    assertion inside the script reads as it would in-process.
    """
    proc = subprocess.run(
        child_command(script, *args),
        env=child_env(devices),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{pathlib.Path(script).name} failed in a subprocess with {devices} devices "
            f"(exit code {proc.returncode}).\n--- stdout ---\n{proc.stdout}"
            f"\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout
