"""The one restore routine (statetree/_checkpoint/_restore.py): its host memory.

A restore reads the arrays in batches of at most the largest value or 64 MiB (BATCH),
twice (check every digest, then write), so it never holds a second copy of the tree;
the children here set BATCH to 0 to see batches of one value in a small model. Measured in child
processes (tests/multidevice/restore_memory.py) from the kernel's peak resident set,
with glibc's mmap threshold fixed so that freed buffers go back to the system at once
(by default glibc may keep them for reuse, which a peak would count as held); across
device layouts: 8 devices -> 1, a 2x2 mesh -> a 1x4 mesh.
"""

import pathlib
import re
import subprocess

from _subprocess import ROOT, SCRIPTS, child_command, child_env

SCRIPT = SCRIPTS / "restore_memory.py"


def launch(directory: pathlib.Path, mode: str, devices: int) -> subprocess.Popen[str]:
    env = child_env(devices)
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    return subprocess.Popen(
        child_command(SCRIPT, str(directory), mode),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> str:
    """The child's output, once it exited successfully (killed after 180 s)."""
    try:
        out, _ = child.communicate(timeout=180)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == 0, out
    return out


def peak(child: subprocess.Popen[str]) -> dict[str, int]:
    out = finish(child)
    found = re.search(r"^PEAK model=(\d+) largest=(\d+) increase=(\d+)$", out, re.M)
    assert found, out
    return dict(zip(("model", "largest", "increase"), map(int, found.groups()), strict=True))


def test_a_restore_holds_a_few_values_never_a_second_tree(tmp_path: pathlib.Path) -> None:
    saving = launch(tmp_path, "save8", 8)
    reshard = launch(tmp_path, "2x2to1x4", 4)
    finish(saving)
    for measured in (peak(launch(tmp_path, "to1", 1)), peak(reshard)):
        # Above the live model (48 MiB: 6 values of 8 MiB, batches of one value): the
        # batch being read (orbax's buffers and the device copy), the digest's blocks,
        # one value being written: about 3 values; never the tree.
        assert measured["increase"] <= 4 * measured["largest"], measured
        assert measured["increase"] < measured["model"], measured
