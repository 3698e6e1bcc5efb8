"""The host memory a restore needs, from the kernel's peak resident set size.
Usage: restore_memory.py DIR MODE.

CPU devices have no allocator statistics (``Device.memory_stats()`` is None), and their
buffers are this process's memory, so the measure is the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``; freed memory handed back with
``malloc_trim`` first). The model: 6 float32 values of 8 MiB (48 MiB), restored in
batches of one value (``BATCH`` set to 0: the 64 MiB floor would read this small model
in one batch). MODE:

- ``save8``: 8 devices, every value sharded over all 8; saves DIR/eight.
- ``to1``: 1 device; restores DIR/eight into a live model on one device.
- ``2x2to1x4``: 4 devices; saves the model sharded over a 2x2 mesh, restores it into
  one sharded over a 1x4 mesh.

The restore runs once to warm up (compilations, orbax's imports), then is measured:
"PEAK model=<bytes> largest=<bytes> increase=<bytes>", the increase being the peak
during the restore above the memory held just before it (the live model included).
"""

import ctypes
import gc
import pathlib
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import statetree as st
from statetree._checkpoint import _restore

_restore.BATCH = 0  # batches of the largest value (the mechanism, at a small scale)

directory, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
SHAPE = (2048, 1024)  # float32: 8 MiB
NAMES = [f"w{i}" for i in range(6)]


def build(seed: int, sharding) -> dict:
    out = {}
    for i, name in enumerate(NAMES):
        host = np.full(SHAPE, seed * 10 + i, np.float32)
        out[name] = st.Param(jax.device_put(host, sharding))
    return st.mutable(out)


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def measured_restore(path: pathlib.Path, tree: dict) -> None:
    st.restore(path, tree)  # warm-up
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = status("VmRSS")
    st.restore(path, tree)
    increase = status("VmHWM") - before
    model = len(NAMES) * int(np.prod(SHAPE)) * 4
    for i, name in enumerate(NAMES):  # restored, bit for bit
        assert float(tree[name][...].min()) == float(tree[name][...].max()) == i
    print(f"PEAK model={model} largest={model // len(NAMES)} increase={increase}", flush=True)


if mode == "save8":
    mesh = jax.make_mesh((8,), ("x",))
    st.save(directory / "eight", build(0, NamedSharding(mesh, P("x"))))
elif mode == "to1":
    measured_restore(directory / "eight", build(1, jax.devices()[0]))
else:
    two = jax.make_mesh((2, 2), ("a", "b"))
    st.save(directory / "two_by_two", build(0, NamedSharding(two, P("a", "b"))))
    wide = jax.make_mesh((1, 4), ("a", "b"))
    measured_restore(directory / "two_by_two", build(1, NamedSharding(wide, P("a", "b"))))
