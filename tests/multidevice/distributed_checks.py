"""Training and checkpoints on a jax.distributed job. Usage: distributed_checks.py DIR.

Run twice at once by tests/test_distributed.py: as a job of 2 processes with 2 CPU
devices each (gloo collectives), and as 1 process with 4 devices. Both build the same
model on a 4-device mesh (batch sharded: data-parallel; ``w1`` and ``w2`` row-sharded),
train it in place with ``st.Optimizer`` and a ``BatchStat`` written inside the loss,
plain and packed, and write their losses and final values to DIR/<role>.npz for the
test to compare step for step. Checkpoints cross over: each side saves DIR/<role>_ckpt
(every process calls st.save), waits for the other side's (a checkpoint appears whole
or not at all, so its existence is the signal) and restores it into its live sharded
Variables in place, checking every shard bit for bit against DIR/<other>_final.npz.
The job then runs docs/multi-process.md and starts one more save, and process 0 stops
just before committing it, creating DIR/killme: the test kills both processes there.
"""

import os
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
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import statetree as st  # noqa: E402
from statetree._checkpoint import _files  # noqa: E402

directory = pathlib.Path(sys.argv[1])
role = "pair" if jax.process_count() == 2 else "single"
other = "single" if role == "pair" else "pair"
assert jax.device_count() == 4, jax.devices()
mesh = jax.make_mesh((4,), ("x",))
STEPS = 6


def place(host: np.ndarray, spec: P) -> jax.Array:
    """A global array from a host value every process holds (each places its shards)."""
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec), lambda i: host[i])


def build(seed: int, packed: bool):
    r = np.random.default_rng(seed)
    model = {
        "w1": st.Param(place(r.normal(size=(8, 16)).astype(np.float32) / 3, P("x"))),
        "b1": st.Param(place(np.zeros(16, np.float32), P())),
        "w2": st.Param(place(r.normal(size=(16, 1)).astype(np.float32) / 4, P("x"))),
        "mean": st.BatchStat(place(np.zeros(16, np.float32), P())),
    }
    with jax.set_mesh(mesh):
        model = st.mutable(model, packed=packed)
        optimizer = st.Optimizer(model, optax.adam(0.05), packed=packed)
    return model, optimizer


@jax.jit
def train_step(model, optimizer, x, y):
    graphdef, params, rest = st.split(model, st.Param, ...)

    def loss_fn(params):
        m = st.merge(graphdef, params, rest)
        h = jnp.tanh(x @ m["w1"] + m["b1"])
        m["mean"][...] = 0.9 * m["mean"][...] + 0.1 * h.mean(axis=0)  # a BatchStat
        return jnp.mean((h @ m["w2"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
    optimizer.update(model, grads)
    return loss


r = np.random.default_rng(7)
x_host = r.normal(size=(32, 8)).astype(np.float32)
x, y = place(x_host, P("x")), place(np.sin(x_host.sum(1, keepdims=True)), P("x"))


def host_values(tree) -> dict[str, np.ndarray]:
    """Every value of the tree as one host array (gathered from all processes)."""
    from jax.experimental import multihost_utils

    out = {}
    for path, v in st.state(st.freeze(tree)).items():
        value = v.value if isinstance(v, st.Variable) else v
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        out["/".join(map(str, path))] = np.asarray(value)
    return out


def check_shards(tree, expected: dict[str, np.ndarray]) -> None:
    """Each shard this process holds equals the expected host value's block, bit for bit."""
    for path, v in st.state(tree).items():
        value = v.value if isinstance(v, st.Variable) else v[...]
        want = expected["/".join(map(str, path))]
        for shard in value.addressable_shards:
            got = np.asarray(shard.data)
            assert got.tobytes() == want[shard.index].tobytes(), path


results = {}
for packed in (False, True):
    name = "packed" if packed else "plain"
    model, optimizer = build(0, packed)
    kernel = model["w1"]
    losses = [float(train_step(model, optimizer, x, y)) for _ in range(STEPS)]
    assert losses[-1] < losses[0], losses
    assert model["w1"] is kernel  # trained in place
    assert float(np.abs(host_values(model)["mean"]).sum()) > 0  # the BatchStat was written
    results[f"{name}_losses"] = np.array(losses)
    for key, value in host_values((model, optimizer)).items():
        results[f"{name}/{key}"] = value
    print(f"{role}: trained {name}, loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)

    # Save from every process, restore in place, here and on the other side.
    state = (model, optimizer)
    final = host_values(state)
    np.savez(directory / f"{role}_{name}_final.npz", **final)
    st.save(directory / f"{role}_{name}_ckpt", state)
    fresh = build(1, packed)
    st.restore(directory / f"{role}_{name}_ckpt", fresh)
    check_shards(fresh, final)
    print(f"{role}: {name} checkpoint restored in place", flush=True)

    theirs = directory / f"{other}_{name}_ckpt"
    deadline = time.monotonic() + 150
    while not theirs.exists():  # the other side's save is renamed into place whole
        assert time.monotonic() < deadline, f"{theirs} never appeared"
        time.sleep(0.2)
    before = [id(v) for v in jax.tree.leaves(fresh, is_leaf=lambda v: isinstance(v, st.Variable))]
    st.restore(theirs, fresh)
    check_shards(fresh, dict(np.load(directory / f"{other}_{name}_final.npz")))
    after = [id(v) for v in jax.tree.leaves(fresh, is_leaf=lambda v: isinstance(v, st.Variable))]
    assert before == after
    print(f"{role}: {name} checkpoint of the {other} side restored", flush=True)

if jax.process_index() == 0:
    np.savez(directory / f"{role}.npz", **results)
print(f"{role}: checks passed", flush=True)

if role == "pair":
    # The multi-process page runs in this job as a user runs it (both processes).
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from _pages import run_page

    run_page(pathlib.Path(__file__).resolve().parents[2] / "docs" / "multi-process.md")
    print("pair: multi-process.md ran", flush=True)

    # One more save; process 0 stops right before its commit (every shard written).
    def hang(tmp: pathlib.Path, final: pathlib.Path) -> None:
        (directory / "killme").touch()
        time.sleep(600)  # killed here

    _files._commit = hang
    model, optimizer = build(0, False)
    st.save(directory / "killed", (model, optimizer))
    os._exit(3)  # never reached: process 0 hangs in _commit, process 1 at the barrier
