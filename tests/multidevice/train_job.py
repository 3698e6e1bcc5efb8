"""A training job that checkpoints with st.CheckpointManager and can be killed at any
moment. Usage: train_job.py DIR STEPS [SLEEP].

Joins the jax.distributed job of the environment (tests/_multiprocess.py) or runs as one
process. Builds a small model (row-sharded over all devices) and adam, both seeded, in
the default and in the packed form (trained side by side), and resumes from the
manager's latest step when DIR/run holds one. Every step's batch is a function of the
step number, so a run interrupted and resumed any number of times computes what one
uninterrupted run computes. The manager saves asynchronously every 3 steps and on
preemption (SIGTERM to every process: save_on_preemption=True). Prints "TRAINED n"
after each step's computation, "STEP n" after its save (then sleeps SLEEP seconds),
"PREEMPTED n" when it stops for a preemption, and "DONE" after writing the final values
(gathered from every process) to DIR/final.npz.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _job

_job.join()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import statetree as st  # noqa: E402

directory, steps = pathlib.Path(sys.argv[1]), int(sys.argv[2])
sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
mesh = jax.make_mesh((jax.device_count(),), ("x",))


def place(host: np.ndarray, spec: P) -> jax.Array:
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec), lambda i: host[i])


def build(packed: bool):
    r = np.random.default_rng(0)
    with jax.set_mesh(mesh):
        model = st.mutable(
            {
                "w1": st.Param(place(r.normal(size=(8, 16)).astype(np.float32) / 3, P("x"))),
                "b1": st.Param(place(np.zeros(16, np.float32), P())),
                "w2": st.Param(place(r.normal(size=(16, 1)).astype(np.float32) / 4, P())),
            },
            packed=packed,
        )
        return model, st.Optimizer(model, optax.adam(0.01), packed=packed)


# The default and the packed form, side by side: one job checks both.
state = {"default": build(False), "packed": build(True)}


def batch(step: int) -> tuple[jax.Array, jax.Array]:
    x = np.random.default_rng(1000 + step).normal(size=(16, 8)).astype(np.float32)
    return place(x, P("x")), place(np.sin(x.sum(1, keepdims=True)), P("x"))


@jax.jit
def train_step(model, optimizer, x, y):
    graphdef, params = st.split(model)

    def loss_fn(params):
        m = st.merge(graphdef, params)
        return jnp.mean((jnp.tanh(x @ m["w1"] + m["b1"]) @ m["w2"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
    optimizer.update(model, grads)
    return loss


manager = st.CheckpointManager(
    directory / "run", max_to_keep=2, save_interval_steps=3, save_on_preemption=True
)
start = 0
if manager.latest_step() is not None:
    start = manager.restore(state) + 1
print(f"START {start}", flush=True)
for step in range(start, steps):
    for model, optimizer in state.values():
        train_step(model, optimizer, *batch(step))
    print(f"TRAINED {step}", flush=True)
    manager.save(step, state)
    print(f"STEP {step}", flush=True)
    if manager.preempted:
        print(f"PREEMPTED {step}", flush=True)
        break
    time.sleep(sleep)
else:
    manager.wait_until_finished()
    out = {}
    for path, v in st.state(st.freeze(state)).items():
        value = v.value if isinstance(v, st.Variable) else v
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        out["/".join(map(str, path))] = np.asarray(value)
    if jax.process_index() == 0:
        np.savez(directory / "final.npz", **out)
    print("DONE", flush=True)
manager.close()
