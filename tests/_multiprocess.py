"""Launch a script as a ``jax.distributed`` job of several processes on this machine.

Each process is a fresh interpreter (under typeguard, as tests/_subprocess.py runs
its children) with ``JAX_NUM_CPU_DEVICES`` CPU devices, gloo collectives, and the job's
coordinates in the environment variables that docs/multi-process.md reads:
``COORDINATOR`` (``localhost:PORT``, a port found free), ``NUM_PROCESSES`` and
``PROCESS_ID``. Every process is bounded by one deadline; on any failure or timeout
the launcher kills the processes it started (by pid, nothing else) and reports every
process's output.
"""

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import pytest
from _subprocess import ROOT, child_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def job_env(process_id: int, num_processes: int, port: int, devices: int) -> dict[str, str]:
    env = dict(os.environ)
    # The device count comes from JAX_NUM_CPU_DEVICES; other flags (tests/conftest.py's
    # optimisation level) pass on.
    flags = env.pop("XLA_FLAGS", "").split()
    kept = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    if kept:
        env["XLA_FLAGS"] = " ".join(kept)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        COORDINATOR=f"localhost:{port}",
        NUM_PROCESSES=str(num_processes),
        PROCESS_ID=str(process_id),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


class Job:
    """The processes of one job, each writing its output (stdout and stderr) to a file
    (no pipe to fill up while the test waits for something else)."""

    def __init__(
        self,
        script: os.PathLike[str] | str,
        *args: str,
        processes: int = 2,
        devices: int = 2,
        distributed: bool = True,
    ) -> None:
        port = free_port()
        self.logs = [tempfile.TemporaryFile("w+") for _ in range(processes)]  # noqa: SIM115
        self.procs = []
        for i in range(processes):
            env = job_env(i, processes, port, devices)
            if not distributed:
                for name in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID"):
                    del env[name]
            self.procs.append(
                subprocess.Popen(
                    child_command(script, *args),
                    env=env,
                    cwd=ROOT,
                    stdout=self.logs[i],
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )

    def output(self, i: int) -> str:
        self.logs[i].seek(0)
        return self.logs[i].read()

    def outputs(self) -> list[str]:
        return [self.output(i) for i in range(len(self.procs))]

    def stop(self) -> None:
        """Kill the processes still running (only these pids) and reap them."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(timeout=30)

    def wait(self, timeout: float) -> list[str]:
        """Wait for every process (one deadline for all); return their outputs. A
        non-zero exit or the deadline fails the test with every process's output."""
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(_report("timed out", self.outputs()), pytrace=False)
        finally:
            self.stop()
        codes = [p.returncode for p in self.procs]
        if any(codes):
            pytest.fail(_report(f"failed, exit codes {codes}", self.outputs()), pytrace=False)
        return self.outputs()


def _report(what: str, outputs: Sequence[str]) -> str:
    parts = [f"multi-process job {what}"]
    for i, out in enumerate(outputs):
        parts.append(f"--- process {i} ---\n{out}")
    return "\n".join(parts)


def run_job(
    script: os.PathLike[str] | str,
    *args: str,
    processes: int = 2,
    devices: int = 2,
    timeout: float = 240,
) -> list[str]:
    """Run ``script`` as a job of ``processes`` processes; return their outputs."""
    return Job(script, *args, processes=processes, devices=devices).wait(timeout)
