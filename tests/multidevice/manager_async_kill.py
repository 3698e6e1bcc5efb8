"""A training job killed while an async save is being written. Usage: DIR.

Saves steps 1-3 with st.CheckpointManager (async, keep 3), then step 4, whose background
write is made to stall after the arrays are written (before orbax finalizes the step):
once this process prints "WRITING 4" (the background thread) and "TRAINING" (the main
thread, back from save), tests/test_manager.py SIGKILLs it.
"""

import pathlib
import sys
import time

import jax.numpy as jnp
from orbax.checkpoint import StandardCheckpointHandler

import statetree as st

directory = pathlib.Path(sys.argv[1])
model = st.mutable({"w": st.Param(jnp.zeros(4)), "step": jnp.array(0)})
manager = st.CheckpointManager(directory, max_to_keep=3)
for step in range(1, 4):
    model["w"][...] = float(step)
    model["step"][...] = step
    manager.save(step, model)
manager.wait_until_finished()
print("SAVED 3", flush=True)

real = StandardCheckpointHandler.async_save


class Stall:
    """A commit future that never completes: the background thread that writes the
    step waits on it (the main thread has returned from save and trains on)."""

    def result(self, timeout=None):
        print("WRITING 4", flush=True)
        time.sleep(600)  # killed here, before the step directory is finalized


async def slow(self, directory, *args, **kwargs):
    futures = await real(self, directory, *args, **kwargs)
    return [*(futures or []), Stall()]


StandardCheckpointHandler.async_save = slow
model["w"][...] = 4.0
model["step"][...] = 4
manager.save(4, model)
model["w"][...] = 5.0  # training goes on while the save is written
print("TRAINING", flush=True)
time.sleep(600)
