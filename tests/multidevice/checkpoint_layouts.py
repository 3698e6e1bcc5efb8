"""Checkpoints across device layouts (8 CPU devices). Usage: checkpoint_layouts.py DIR.

Saves a tree sharded one way to DIR/eight, restores it into trees laid out other ways
(another mesh, another partitioning, one device) and checks every value bit for bit and
every sharding. Leaves DIR/eight and DIR/expected.npz (the values' bytes) behind for
tests/test_checkpoint.py, which restores the checkpoint in its own one-device process.
Run by tests/test_checkpoint.py through tests/_subprocess.py.
"""

import pathlib
import sys

import statetree as st

# Importing statetree must not import orbax (an optional extra, slow to import).
assert not any(name.startswith("orbax") for name in sys.modules), "statetree imported orbax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

directory = pathlib.Path(sys.argv[1])
assert jax.device_count() == 8


def build(layout, seed):
    """The test tree (seed 0: the saved values; others: zeros and other keys), every value
    placed by ``layout(name, value)``."""
    scale = 1 if seed == 0 else 0
    values = {
        "w": np.arange(64, dtype=np.float32).reshape(8, 8) / 7 * scale,
        "bf16": (np.arange(16, dtype=np.float32) / 3 * scale).astype(jnp.bfloat16),
        "int8": np.arange(-16, 16, dtype=np.int8).reshape(8, 4) * scale,
        "raw_key": np.array(jax.random.key_data(jax.random.split(jax.random.key(3), 8))),
        "keys": jax.random.split(jax.random.key(seed), 8),
    }
    values["raw_key"] *= scale
    placed = {k: jax.device_put(v, layout(k, v)) for k, v in values.items()}
    stat = st.BatchStat(placed.pop("bf16"))
    tree = {"params": {"w": st.Param(placed["w"])}, "stat": stat, "same_stat": stat}
    tree.update(int8=placed["int8"], raw_key=placed["raw_key"], keys=st.Cache(placed["keys"]))
    return st.mutable(tree)


def data(array):
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        array = jax.random.key_data(array)
    return np.asarray(array)


def snapshot(tree):
    return {" ".join(map(str, p)): data(v.value) for p, v in st.state(tree).items()}


def shardings(tree):
    return {p: v.sharding for p, v in st.state(tree).items()}


mesh8 = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
mesh42 = jax.make_mesh((4, 2), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)
rows = lambda name, v: NamedSharding(mesh8, P("x"))  # every leading dim is 8 or 16
other = lambda name, v: NamedSharding(mesh42, P(None, "b") if v.ndim == 2 else P(("a", "b")))
one_device = lambda name, v: jax.devices()[5]

source = build(rows, seed=0)
expected = snapshot(source)
st.save(directory / "eight", source)
np.savez(directory / "expected.npz", **expected)

for name, layout in [("4x2 mesh, other axes", other), ("one device", one_device)]:
    target = build(layout, seed=1)
    layouts = shardings(target)
    objects = [id(v) for v in st.state(target).values()]
    st.restore(directory / "eight", target)
    got = snapshot(target)
    for path, want in expected.items():
        assert got[path].dtype == want.dtype, (name, path, got[path].dtype)
        assert got[path].tobytes() == want.tobytes(), (name, path)
    assert shardings(target) == layouts, name  # restored into the target's layout
    assert [id(v) for v in st.state(target).values()] == objects  # in place
    assert target["stat"] is target["same_stat"]
    print(f"restored onto {name}")
print("checkpoint layouts passed")
