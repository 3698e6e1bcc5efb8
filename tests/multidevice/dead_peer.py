"""A 2-process job in which process 1 dies in the middle of a checkpoint call.
Usage: dead_peer.py DIR MODE (MODE: save, restore, manager_save, manager_restore).

Both processes first write a good checkpoint (DIR/step_1, or step 1 of the manager in
DIR/run). Then process 1 SIGKILLs itself inside orbax's work of the next call: while its
shards are being written (save, manager_save: in the background thread of an async
save, which the main thread meets in wait_until_finished), or while it reads them
(restore, manager_restore). Process 0 must raise st.PeerError naming the call and
process 1 within the peer timeout (PEER_TIMEOUT below); it prints "PEER ERROR <seconds>
<message>" and leaves at once (os._exit: jax.distributed's own shutdown would wait for
the dead process until its heartbeat timeout). tests/test_distributed.py then
checks the files.
"""

import os
import pathlib
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _job

_job.join()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from orbax.checkpoint import PyTreeCheckpointHandler, StandardCheckpointHandler  # noqa: E402

import statetree as st  # noqa: E402

PEER_TIMEOUT = 4.0

directory, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
mesh = jax.make_mesh((jax.device_count(),), ("x",))
me = jax.process_index()


def build(value: float):
    host = np.full((64, 32), value, np.float32)
    sharding = NamedSharding(mesh, P("x"))
    return st.mutable(
        {
            "w": st.Param(jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])),
            "b": st.Param(jnp.full(3, value)),
        }
    )


def die() -> None:
    if me == 1:
        print("DYING", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


model = build(1.0)
manager = None
if mode.startswith("manager"):
    manager = st.CheckpointManager(directory / "run", peer_timeout=PEER_TIMEOUT)
    manager.save(1, model)
    manager.wait_until_finished()
else:
    st.save(directory / "step_1", model, peer_timeout=PEER_TIMEOUT)
print("SAVED 1", flush=True)

if mode.endswith("save"):
    real = StandardCheckpointHandler.async_save

    class Dying:
        def result(self, timeout=None):
            die()

    async def dying(self, *args, **kwargs):
        futures = await real(self, *args, **kwargs)  # the writes are under way
        return [*(futures or []), Dying()]

    StandardCheckpointHandler.async_save = dying
else:
    real_restore = PyTreeCheckpointHandler.restore  # how a restore reads its arrays

    def dying_restore(self, *args, **kwargs):
        die()
        return real_restore(self, *args, **kwargs)

    PyTreeCheckpointHandler.restore = dying_restore

model = build(2.0)
start = time.monotonic()
try:
    if mode == "save":
        st.save(directory / "step_2", model, peer_timeout=PEER_TIMEOUT)
    elif mode == "restore":
        st.restore(directory / "step_1", model, peer_timeout=PEER_TIMEOUT)
    elif mode == "manager_save":
        assert manager is not None
        manager.save(2, model)  # async: process 1 dies in the background write
        manager.wait_until_finished()
    else:
        assert manager is not None
        manager.restore(model)
except st.PeerError as e:
    print(f"PEER ERROR {time.monotonic() - start:.1f} {e}", flush=True)
    os._exit(0)
except BaseException as e:
    print(f"OTHER ERROR {type(e).__name__}: {e}", flush=True)
    os._exit(2)
print("NO ERROR", flush=True)
os._exit(1)
