"""Packed buffers keep their values' named shardings (4 of the process's CPU devices).

Run by tests/test_packed.py through tests/multidevice/eight_devices.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import statetree as st

mesh = jax.make_mesh((4,), ("d",), devices=jax.devices()[:4])
rows = NamedSharding(mesh, P("d"))
tree = {
    "a": jax.device_put(jnp.arange(8.0).reshape(4, 2), rows),
    "b": jax.device_put(jnp.ones((4, 2)), rows),
    "r": jax.device_put(jnp.ones(3), NamedSharding(mesh, P())),
}
packed = st.mutable(tree, packed=True)
assert len(packed.buffers) == 2, packed.buffers  # one per sharding
frozen = st.freeze(packed)
for k in tree:
    assert frozen[k].sharding.is_equivalent_to(tree[k].sharding, 2), k
    assert (frozen[k] == tree[k]).all(), k


@jax.jit
def f(p):
    p["a"][...] += 1


f(packed)
assert float(np.asarray(packed["a"][...])[3, 1]) == 8.0
print("packed shardings passed")
