"""Variables keep their sharding through every statetree operation (8 CPU devices).

Run by tests/test_sharding.py in a subprocess (see tests/_subprocess.py). Each check
compares shardings and values with what NumPy computes; the same checks run under a
mesh with automatic axes and one with explicit axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import statetree as st

assert jax.device_count() == 8, jax.devices()


def same(a, b):
    return a.is_equivalent_to(b, 2)


def check(axis_type: AxisType) -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))
    rows = NamedSharding(mesh, P("data", "model"))
    cols = NamedSharding(mesh, P("model", None))
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    x = jax.device_put(base, rows)

    # Construction, mutable/freeze/unbox, split/merge: the raw storage keeps its layout.
    # Under jax.set_mesh, new values (and so new Refs) are replicated over the mesh;
    # outside it a Ref would be committed to one device, which jit cannot mix with these.
    with jax.set_mesh(mesh):
        tree = {"w": st.Param(x), "bare": x, "shared": st.BatchStat(jnp.zeros(8))}
        tree["alias"] = tree["shared"]
        model = st.mutable(tree)
    assert same(model["shared"].sharding, NamedSharding(mesh, P()))
    direct = st.Variable(x, mutable=True)  # a Ref made from a sharded array
    direct.value = jax.device_put(base, cols)  # written from another layout
    assert same(direct.sharding, rows) and same(direct.value.sharding, rows)
    assert same(model["w"].sharding, rows) and same(model["bare"].sharding, rows)
    assert model["alias"] is model["shared"]
    frozen = st.freeze(model)
    assert same(frozen["w"].sharding, rows) and same(frozen["bare"].sharding, rows)
    assert same(st.unbox(model)["w"].sharding, rows)
    graphdef, params, rest = st.split(model, st.Param, ...)
    assert same(params[("w",)].sharding, rows)
    merged = st.merge(graphdef, params, rest)
    assert merged["w"] is model["w"] and same(merged["w"].sharding, rows)
    remutable = st.mutable(st.freeze(model))
    assert same(remutable["w"].sharding, rows) and same(remutable["bare"].sharding, rows)

    # Eager writes: whole, broadcast scalar, other layout, rows, a column block.
    w = model["w"]
    expected = base.copy()
    writes = [
        (..., jax.device_put(base * 2, cols)),
        (..., 3.0),
        (0, jnp.arange(8.0)),
        (slice(2, 4), 7.0),
        ((slice(None), slice(0, 2)), jnp.ones((8, 2))),
    ]
    for idx, value in writes:
        w[idx] = value
        expected[idx] = np.asarray(value)
        assert same(w.sharding, rows), (idx, w.sharding)
        assert same(w.value.sharding, rows), (idx, w.value.sharding)
        np.testing.assert_array_equal(np.asarray(w.value), expected)

    # st.update with a value laid out differently (or on one device) writes in place.
    st.update(model, st.State({("w",): jax.device_put(base, cols), ("bare",): base + 1}))
    assert same(model["w"].sharding, rows) and same(model["bare"].sharding, rows)
    np.testing.assert_array_equal(np.asarray(model["bare"].value), base + 1)

    # Writes inside jax.jit land in place and keep the layout. The tree shares a
    # Variable, so it goes in split (deduplicated) and is merged inside.
    @jax.jit
    def step(graphdef, state, y):
        model = st.merge(graphdef, state)
        model["w"][...] = y  # laid out differently
        model["w"][0] = 1.0
        model["w"][4:8] += 1.0
        model["bare"][...] += 1.0
        model["alias"][...] += 2.0  # the same BatchStat as model["shared"]

    y = jax.device_put(base * 3, cols)
    step(*st.split(model), y)
    step(*st.split(model), y)
    expected = base * 3
    expected[0] = 1.0
    expected[4:8] += 1.0
    np.testing.assert_allclose(np.asarray(model["w"].value), expected)
    np.testing.assert_array_equal(np.asarray(model["bare"].value), base + 3)
    np.testing.assert_array_equal(np.asarray(model["shared"].value), np.full(8, 4.0))
    for path in ("w", "bare"):
        assert same(model[path].sharding, rows), (path, model[path].sharding)

    # The tree itself (no aliases) passed to jit.
    @jax.jit
    def scale(params):
        params["w"][...] = params["w"] * 0.5

    scale({"w": model["w"]})
    np.testing.assert_allclose(np.asarray(model["w"].value), expected * 0.5)
    assert same(model["w"].sharding, rows)

    # Packed buffers on the mesh take values made outside jax.set_mesh (no layout of their
    # own), written one slot at a time or as a whole buffer, eagerly and inside jit.
    replicated = NamedSharding(mesh, P())
    packed = st.mutable(
        {
            "a": jax.device_put(jnp.ones(4), replicated),
            "b": jax.device_put(jnp.ones(4), replicated),
            "rows": x,
            "rows2": x,
        },
        packed=True,
    )
    packed["a"][...] = jnp.full(4, 2.0)
    packed["rows"][...] = jnp.asarray(base * 2)

    @jax.jit
    def write(tree):
        tree["b"][...] = jnp.full(4, 3.0)
        tree["rows2"][...] = jnp.asarray(base * 3)

    write(packed)
    st.update(packed, st.State({("a",): jnp.full(4, 4.0), ("b",): jnp.full(4, 5.0)}))
    got = st.unbox(st.freeze(packed))
    np.testing.assert_array_equal(np.asarray(got["a"]), np.full(4, 4.0))
    np.testing.assert_array_equal(np.asarray(got["b"]), np.full(4, 5.0))
    np.testing.assert_array_equal(np.asarray(got["rows"]), base * 2)
    np.testing.assert_array_equal(np.asarray(got["rows2"]), base * 3)
    assert same(got["rows"].sharding, rows), got["rows"].sharding

    # An Optimizer built outside jax.set_mesh: optax's counter and the step count are
    # made on one device, so the Optimizer places them over the parameters' mesh.
    for packed in (False, True):
        params = st.mutable({"w": st.Param(x)}, packed=packed)
        optimizer = st.Optimizer(params, optax.adam(0.5), packed=packed)
        for leaf in jax.tree.leaves((params, optimizer)):
            assert len(leaf.sharding.device_set) == 8, leaf.sharding

        @jax.jit
        def train(params, optimizer):
            grads = jax.grad(lambda p: jnp.sum(st.unbox(p)["w"] ** 2))(st.freeze(params))
            optimizer.update(params, grads)

        train(params, optimizer)
        # Adam's first step moves each weight by the learning rate against its gradient.
        np.testing.assert_allclose(
            np.asarray(params["w"][...]), base - 0.5 * np.sign(base), atol=1e-4
        )
        assert int(optimizer.step[...]) == 1
        assert same(params["w"].sharding, rows)
    print(f"sharding checks passed ({axis_type})")


check(AxisType.Auto)
check(AxisType.Explicit)
