"""Packed trees: st.mutable(tree, packed=True)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import statetree as st


@st.register_node
class Linear:
    def __init__(self, din: int, dout: int) -> None:
        self.kernel = st.Param(jnp.arange(din * dout, dtype=jnp.float32).reshape(din, dout))
        self.bias = st.Param(jnp.zeros(dout))
        self.count = st.BatchStat(jnp.zeros((), jnp.int32))
        self.name = "linear"

    def __call__(self, x):
        self.count[...] += 1
        return x @ self.kernel + self.bias


def make_tree():
    return {
        "w": st.Param(jnp.ones((2, 3)), tag="weights"),
        "b": [jnp.arange(4), jnp.zeros(())],
        "stats": st.BatchStat(jnp.full(3, 2.0)),
        "act": "relu",
    }


def assert_same(a, b):
    """Equal structure, kinds, metadata and values."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert getattr(x, "dtype", None) == getattr(y, "dtype", None)


@jax.jit
def bump(tree):
    tree["w"][...] += 1
    tree["b"][0][1] = 7
    tree["stats"][...] = tree["w"][0] * 2


def test_round_trip_equals_plain():
    tree = make_tree()
    packed = st.mutable(tree, packed=True)
    assert isinstance(packed, st.Packed)
    assert_same(st.freeze(packed), st.freeze(st.mutable(tree)))
    assert_same(st.unbox(st.freeze(packed)), st.unbox(tree))
    assert packed["w"].metadata == {"tag": "weights"}
    assert type(packed["stats"]) is st.BatchStat
    assert not isinstance(st.freeze(packed), st.Packed)


def test_packing_traced_values_keeps_their_gradient():
    # Packing inside a differentiated function: float and int values of one width once
    # shared a bitcast integer buffer there, and the gradient came out zero, silently.
    def loss(w, packed):
        tree = st.mutable({"w": w, "n": jnp.arange(2, dtype=jnp.int32)}, packed=packed)
        return jnp.sum(tree["w"][...] ** 2 * tree["n"][...])

    w = jnp.array([1.0, 2.0])
    expected = jax.grad(loss)(w, False)
    np.testing.assert_array_equal(expected, [0.0, 4.0])
    np.testing.assert_array_equal(jax.grad(loss)(w, True), expected)


def test_input_is_not_written():
    tree = st.mutable(make_tree())
    packed = st.mutable(tree, packed=True)
    packed["w"][...] = 5.0
    assert float(tree["w"][0, 0]) == 1.0
    assert float(packed["w"][0, 0]) == 5.0


def test_eager_writes_land_in_the_buffer():
    packed = st.mutable(make_tree(), packed=True)
    (buffer,) = packed.buffers
    packed["w"][0, 1] = 5.0
    packed["b"][0][...] = jnp.array([9, 8, 7, 6])
    assert packed["w"][...].tolist() == [[1, 5, 1], [1, 1, 1]]
    assert packed["b"][0][...].tolist() == [9, 8, 7, 6]
    assert float(packed["stats"][1]) == 2.0  # the neighbours are untouched
    # The same bits are in the one buffer the jitted call receives.
    start, _ = packed["w"]._raw.where
    assert jax.lax.bitcast_convert_type(buffer[start + 1], jnp.float32) == 5.0


def test_jit_writes_land_in_place():
    packed = st.mutable(make_tree(), packed=True)
    before = packed.buffers
    bump(packed)
    assert packed.buffers == before
    assert packed["w"][...].tolist() == [[2.0] * 3] * 2
    assert packed["b"][0][...].tolist() == [0, 7, 2, 3]
    assert packed["stats"][...].tolist() == [4.0] * 3
    lowered = bump.lower(packed).as_text()
    assert lowered.count("tf.aliasing_output") == 1


def test_forwarding_attributes_items_iteration_calls():
    model = st.mutable([Linear(2, 3), Linear(3, 1)], packed=True)
    assert len(model) == 2
    assert [layer.name for layer in model] == ["linear", "linear"]
    assert model[0].kernel.shape == (2, 3)

    @jax.jit
    def apply(model, x):
        return model[1](model[0](x))

    out = apply(model, jnp.ones((1, 2)))
    assert out.shape == (1, 1)
    assert int(model[0].count[...]) == 1

    single = st.mutable(Linear(2, 2), packed=True)
    assert single.name == "linear"
    assert single(jnp.ones(2)).tolist() == [2.0, 4.0]
    assert "w" in st.mutable({"w": jnp.ones(1)}, packed=True)


def test_structure_is_fixed():
    packed = st.mutable(make_tree(), packed=True)
    with pytest.raises(
        st.StructureError, match=r"Cannot assign item 'w'.*packed\['w'\]\[\.\.\.\]"
    ):
        packed["w"] = jnp.zeros((2, 3))
    single = st.mutable(Linear(1, 1), packed=True)
    with pytest.raises(st.StructureError, match="Cannot set attribute 'kernel'"):
        single.kernel = st.Param(jnp.ones((1, 1)))
    with pytest.raises(TypeError, match=r"st.mutable\(tree, packed=True\)"):
        st.Packed()
    assert packed["w"].shape == (2, 3)  # unchanged after the refused writes


def test_grad_through_freeze():
    packed = st.mutable(
        {"w": st.Param(jnp.arange(3.0)), "n": st.BatchStat(jnp.zeros(()))}, packed=True
    )

    def loss(params):
        return jnp.sum(params["w"][...] ** 2)

    grads = jax.grad(loss)(st.freeze(packed))
    assert grads["w"][...].tolist() == [0.0, 2.0, 4.0]
    ours = r"packed tree was passed as a differentiated argument.*st.freeze\(packed\)"
    if jax.__version_info__ >= (0, 11):  # jax.grad refuses Ref arguments itself
        with pytest.raises(TypeError, match=r"Ref-typed argument"):
            jax.grad(lambda p: jnp.sum(p["w"][...]))(packed)
    else:
        with pytest.raises(st.RefValueError, match=ours):
            jax.grad(lambda p: jnp.sum(p["w"][...]))(packed)
    with pytest.raises(st.RefValueError, match=ours):  # statetree's advice on every JAX
        jax.vjp(lambda p: jnp.sum(p["w"][...]), packed)


def test_split_merge_keep_buffers():
    packed = st.mutable(make_tree(), packed=True)
    graphdef, params, rest = st.split(packed, st.Param, ...)
    assert list(params) == [("w",)]
    merged = st.merge(graphdef, params, rest)
    assert isinstance(merged, st.Packed)
    assert merged.buffers[0] is packed.buffers[0]
    merged["w"][...] = 3.0
    assert float(packed["w"][0, 0]) == 3.0

    @jax.jit
    def step(graphdef, params, rest_packed):
        _, _, rest = st.split(rest_packed, st.Param, ...)
        model = st.merge(graphdef, params, rest)
        model["stats"][...] = jnp.sum(model["w"][...]) * jnp.ones(3)

    step(graphdef, st.freeze(params), packed)
    assert packed["stats"][...].tolist() == [18.0] * 3


def test_state_and_update():
    packed = st.mutable({f"v{i}": jnp.full((2,), float(i)) for i in range(6)}, packed=True)
    # Most of the buffer at once (written whole), then a little of it (view by view).
    st.update(packed, st.State({(f"v{i}",): jnp.full((2,), 10.0 + i) for i in range(5)}))
    st.update(packed, st.State({("v5",): jnp.ones(2) * -1}))
    assert [float(packed[f"v{i}"][0]) for i in range(6)] == [10, 11, 12, 13, 14, -1]
    # The same path in two States: the last wins.
    st.update(packed, st.State({("v0",): jnp.zeros(2)}), st.State({("v0",): jnp.ones(2)}))
    assert packed["v0"][...].tolist() == [1.0, 1.0]
    with pytest.raises(st.StructureError, match=r"\['v1'\]: expected float32\[2\]"):
        st.update(packed, st.State({("v1",): jnp.zeros(3)}))
    assert packed["v1"][...].tolist() == [11.0, 11.0]


def _ref_writes(f, *args):
    """How many Ref writes (``ref[...] <- x``) the jaxpr of ``f(*args)`` makes."""
    jaxpr = jax.make_jaxpr(f)(*args).jaxpr
    return sum(eqn.primitive.name == "swap" for eqn in jaxpr.eqns)


def test_update_writes_most_of_a_buffer_at_once():
    tree = {f"v{i}": jnp.full((2,), float(i)) for i in range(4)}
    tree["n"] = jnp.arange(3)  # int32: shares the uint32 buffer, written by bitcast
    packed = st.mutable(tree, packed=True)
    most = st.State({(k,): jnp.full_like(tree[k], 9) for k in ("v0", "v2", "n")})
    little = st.State({("v1",): jnp.full((2,), 5.0)})
    # 7 of 11 elements: one write of the whole buffer, keeping v1 and v3 between.
    assert _ref_writes(st.update, packed, most) == 1
    assert _ref_writes(st.update, packed, little) == 1
    assert (
        _ref_writes(st.update, packed, st.State({**dict(most.items()), ("v3",): jnp.ones(2)})) == 1
    )
    jax.jit(st.update)(packed, most)
    st.update(packed, little)
    got = {k: v.tolist() for k, v in st.unbox(st.freeze(packed)).items()}
    assert got == {"v0": [9, 9], "v1": [5, 5], "v2": [9, 9], "v3": [3, 3], "n": [9, 9, 9]}
    assert packed["n"].dtype == jnp.int32


def test_update_writes_a_little_of_a_buffer_view_by_view():
    packed = st.mutable({f"v{i}": jnp.zeros(2) for i in range(5)}, packed=True)
    two = st.State({("v1",): jnp.ones(2), ("v3",): jnp.ones(2)})
    assert _ref_writes(st.update, packed, two) == 2
    st.update(packed, two)
    assert [float(packed[f"v{i}"][0]) for i in range(5)] == [0, 1, 0, 1, 0]


def test_update_writes_large_slots_view_by_view():
    # Slots past 2**12 elements: XLA updates each in place, a whole-buffer write would
    # need a temporary of the buffer's size.
    big = 2**12 + 1
    packed = st.mutable({"a": jnp.zeros(big), "b": jnp.zeros(big)}, packed=True)
    new = st.State({("a",): jnp.ones(big), ("b",): jnp.full(big, 2.0)})
    assert _ref_writes(st.update, packed, new) == 2
    st.update(packed, new)
    assert float(packed["a"][-1]) == 1.0 and float(packed["b"][0]) == 2.0


def test_optimizer_writes_each_buffer_once():
    model = st.mutable({f"w{i}": st.Param(jnp.ones(3)) for i in range(4)}, packed=True)
    plain = st.mutable({f"w{i}": st.Param(jnp.ones(3)) for i in range(4)})
    tx = optax.adam(0.1)
    opt, opt_plain = st.Optimizer(model, tx, packed=True), st.Optimizer(plain, tx)
    grads = {f"w{i}": jnp.full(3, float(i)) for i in range(4)}
    n_buffers = len(model.buffers) + len(opt.opt_state.buffers)
    # Model and optimizer one write each: the step counter lives in the optax buffer.
    assert _ref_writes(lambda m, o: o.update(m, grads), model, opt) == n_buffers
    step = jax.jit(lambda m, o: o.update(m, grads))
    for _ in range(2):
        step(model, opt)
        step(plain, opt_plain)
    assert_same(st.unbox(st.freeze(model)), st.unbox(st.freeze(plain)))


def test_part_of_a_packed_tree_passed_to_jit_is_refused_where_jax_meets_it():
    packed = st.mutable({"m": {"a": jnp.ones(2)}, "c": jnp.ones(1)}, packed=True)

    @jax.jit
    def bump(part):
        part["a"][...] += 1

    @jax.jit
    def read(part):
        return part["a"][...] * 2

    for fn in (bump, read):
        with pytest.raises(st.StructureError, match=r"without its packed tree.*st.Packed"):
            fn(packed["m"])
    _, state = st.split(packed)
    with pytest.raises(st.StructureError, match="Pass the whole packed tree"):
        read(state)
    assert packed["m"]["a"][...].tolist() == [1.0, 1.0]

    @jax.jit
    def bump_inside(tree):
        bump.__wrapped__(tree["m"])

    bump_inside(packed)
    assert packed["m"]["a"][...].tolist() == [2.0, 2.0]
    assert read(st.freeze(packed["m"])).tolist() == [4.0, 4.0]


def test_a_frozen_write_inside_jit_does_not_talk_about_packing():
    @jax.jit
    def bump(tree):
        tree["a"][...] += 1

    with pytest.raises(st.FrozenVariableError) as info:
        bump({"a": st.Variable(jnp.ones(2))})
    assert "pack" not in str(info.value)


def test_one_large_array_at_two_paths_packs_as_two():
    from statetree._packed import LARGE

    big = jnp.zeros(LARGE)
    for tree in ({"a": st.Param(big), "b": st.Param(big)}, {"a": big, "b": big}):
        packed = st.mutable(tree, packed=True)
        assert len(packed.buffers) == 2  # independent Variables, as st.mutable(tree) makes
        packed["a"][0] = 1.0
        assert float(packed["b"][0]) == 0.0


def test_empty_slots_read_and_write():
    packed = st.mutable({"a": jnp.ones(4), "z": jnp.zeros(0), "m": jnp.zeros((2, 0))}, packed=True)

    @jax.jit
    def write(tree):
        tree["z"][...] = jnp.zeros(0)
        tree["m"][...] = jnp.zeros((2, 0))
        tree["a"][...] += 1

    write(packed)
    st.update(packed, st.State({("z",): jnp.zeros(0)}))
    assert packed["z"][...].shape == (0,) and packed["m"][...].shape == (2, 0)
    assert packed["a"][...].tolist() == [2.0] * 4


def test_large_arrays_keep_their_own_buffer():
    from statetree._packed import LARGE

    tree = {"big": st.Param(jnp.ones(LARGE)), "w": jnp.ones(3), "n": jnp.arange(2)}
    packed = st.mutable(tree, packed=True)
    assert sorted((str(b.dtype), b.shape) for b in packed.buffers) == [
        ("float32", (LARGE,)),
        ("uint32", (5,)),
    ]
    packed["big"][:2] = 3.0
    assert packed["big"][:3].tolist() == [3.0, 3.0, 1.0]
    assert_same(st.unbox(st.freeze(st.mutable(tree, packed=True))), st.unbox(tree))


def test_dtypes_share_buffers_by_width():
    tree = {
        "f32": jnp.ones(2),
        "i32": jnp.arange(3),
        "bf16": jnp.ones(2, jnp.bfloat16),
        "i16": jnp.arange(2, dtype=jnp.int16),
        "bool": jnp.array([True, False]),
    }
    packed = st.mutable(tree, packed=True)
    assert sorted(str(b.dtype) for b in packed.buffers) == ["bool", "uint16", "uint32"]
    assert_same(st.unbox(st.freeze(packed)), tree)
    packed["bf16"][...] = jnp.array([2.5, -1.0], jnp.bfloat16)
    assert packed["bf16"][...].tolist() == [2.5, -1.0]
    assert packed["i32"][...].tolist() == [0, 1, 2]


def test_sub_byte_dtypes_get_a_buffer_of_their_own_type():
    tree = {
        "q": jnp.arange(4, dtype=jnp.int4),
        "r": jnp.ones(3, jnp.int4),
        "u": jnp.ones(2, jnp.uint8),
    }
    packed = st.mutable(tree, packed=True)
    assert sorted(str(b.dtype) for b in packed.buffers) == ["int4", "uint8"]
    packed["q"][...] = jnp.full(4, -2, jnp.int4)
    assert packed["q"][...].tolist() == [-2] * 4 and packed["r"][...].tolist() == [1] * 3


def test_only_packs_the_chosen():
    tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(2))}
    packed = st.mutable(tree, only=st.Param, packed=True)
    assert len(packed.buffers) == 1
    assert not packed["n"].mutable  # left as it was
    assert packed["w"].mutable
    assert st.mutable(tree, only=st.Param, packed=True)["n"] is tree["n"]


def test_shardings_kept():
    packed = st.mutable({"w": jnp.ones((2, 2))}, packed=True)
    assert packed["w"].sharding == jnp.ones(1).sharding
    assert st.freeze(packed)["w"].sharding == jnp.ones(1).sharding


def test_named_shardings_across_devices(eight_devices):
    # tests/multidevice/packed_shardings.py, in the session's 8-device subprocess.
    assert "packed shardings passed" in eight_devices.section("packed shardings")


def test_in_place_step_allocates_no_second_copy():
    tx = optax.adam(1e-3)
    arrays = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}

    def functional(p, o):
        updates, o = tx.update(jax.tree.map(jnp.ones_like, p), o, p)
        return optax.apply_updates(p, updates), o

    donated = jax.jit(functional, donate_argnums=(0, 1)).lower(arrays, tx.init(arrays))
    donated = donated.compile().memory_analysis()

    def in_place(model, opt):
        p = st.unbox(st.freeze(model))
        new_p, new_o = functional(p, st.unbox(st.freeze(opt)))
        st.update(model, st.state(new_p))
        st.update(opt, st.state(new_o))

    for packed in (False, True):
        model = st.mutable(arrays, packed=packed)
        opt = st.mutable(tx.init(arrays), packed=packed)
        stats = jax.jit(in_place).lower(model, opt).compile().memory_analysis()
        state_bytes = donated.argument_size_in_bytes
        assert stats.argument_size_in_bytes == state_bytes
        assert stats.alias_size_in_bytes == donated.alias_size_in_bytes == state_bytes


def test_traced_repr_and_pack_inside_jit():
    @jax.jit
    def f(x):
        packed = st.mutable({"x": x}, packed=True)
        assert "traced" in repr(packed)
        packed["x"][...] *= 2
        return st.unbox(st.freeze(packed))["x"]

    assert f(jnp.arange(3.0)).tolist() == [0.0, 2.0, 4.0]


def test_repack_and_tree_map():
    packed = st.mutable(make_tree(), packed=True)
    again = st.mutable(packed, packed=True)
    assert again.buffers[0] is not packed.buffers[0]
    assert_same(st.freeze(again), st.freeze(packed))
    kept = st.mutable(packed)
    assert isinstance(kept, st.Packed) and kept.buffers[0] is packed.buffers[0]
    assert jax.tree.structure(packed) == jax.tree.structure(again)


# ------------------------------------------------------------- reads after writes
def _gets(fn, *args) -> int:
    """How many Ref reads the jaxpr of ``fn(*args)`` makes."""
    return sum(e.primitive.name == "get" for e in jax.make_jaxpr(fn)(*args).eqns)


def test_a_read_after_a_write_in_one_trace_reuses_the_value_written():
    packed = st.mutable({f"v{i}": jnp.full(4, float(i)) for i in range(5)}, packed=True)

    def ema(tree, x):
        total = 0.0
        for k in sorted(tree):
            tree[k][...] = 0.9 * tree[k][...] + 0.1 * x
            total = total + jnp.sum(tree[k][...]) + tree[k][2]  # read back twice
        return total

    # One read of the buffer, which every first read of a slot slices; the reads back
    # take the value written, so no slot write has to wait for a read of the buffer
    # made after an earlier slot write (XLA's CPU backend then runs each write as a
    # pass over the whole buffer).
    assert _gets(ema, packed, jnp.ones(4)) == 1
    plain = st.mutable({f"v{i}": jnp.full(4, float(i)) for i in range(5)})
    expected = jax.jit(ema)(plain, jnp.ones(4))
    np.testing.assert_allclose(jax.jit(ema)(packed, jnp.ones(4)), expected, rtol=1e-6)
    assert_same(st.unbox(st.freeze(packed)), st.unbox(st.freeze(plain)))


def test_slots_not_written_are_sliced_from_one_read_of_the_buffer():
    def step(tree):
        tree["a"][...] = tree["a"][...] + 1  # written, not read back
        seen = tree["b"][...] * 2  # never written: a slice of the buffer read once
        tree["b"][0] = 5.0  # an indexed write reads the slot, then writes it whole
        return seen, tree["b"][...], tree["c"][1:]

    def fresh(packed: bool):
        tree = {"a": jnp.arange(3.0), "b": jnp.array([10.0, 11.0]), "c": jnp.arange(4)}
        return st.mutable(tree, packed=packed)

    packed = fresh(True)
    assert _gets(step, packed) == 1
    got, want = jax.jit(step)(packed), jax.jit(step)(plain := fresh(False))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert_same(st.unbox(st.freeze(packed)), st.unbox(st.freeze(plain)))


def test_reads_after_writes_see_writes_made_by_nested_transforms():
    packed = st.mutable({"a": jnp.zeros(3), "b": jnp.zeros(2)}, packed=True)
    bump = jax.jit(lambda tree: tree["a"].__setitem__(Ellipsis, tree["a"][...] + 1))

    @jax.jit
    def step(tree, x):
        tree["a"][...] = jnp.full(3, 5.0) + x
        seen = [tree["a"][...]]
        bump(tree)  # a nested jit: traced once, replayed from its cache the 2nd time
        seen.append(tree["a"][...])

        def body(carry, _):
            tree["a"][...] += 1  # a scan body closing over the tree
            return carry, None

        jax.lax.scan(body, 0, length=2)
        seen.append(tree["a"][...])
        tree["a"][1] = -1.0  # an indexed write, then a read back
        seen.append(tree["a"][...])
        return seen

    for x in (0.0, jnp.zeros(3)):  # the second call traces again, bump does not
        packed["a"][...] = jnp.zeros(3)
        seen = [s.tolist() for s in step(packed, x)]
        assert seen == [[5.0] * 3, [6.0] * 3, [8.0] * 3, [8.0, -1.0, 8.0]]
    assert packed["a"][...].tolist() == [8.0, -1.0, 8.0]


def test_an_optimizer_update_then_reads_see_the_new_values():
    model = st.mutable({f"w{i}": st.Param(jnp.ones(3)) for i in range(4)}, packed=True)
    opt = st.Optimizer(model, optax.sgd(0.5), packed=True)
    grads = {f"w{i}": jnp.full(3, float(i)) for i in range(4)}

    @jax.jit
    def step(model, opt):
        opt.update(model, grads)
        return [model[f"w{i}"][...] for i in range(4)], opt.step[...]

    values, count = step(model, opt)
    assert [v.tolist() for v in values] == [[1.0 - 0.5 * i] * 3 for i in range(4)]
    assert int(count) == 1


def test_eager_slot_reads_share_one_compiled_reader_per_shape_and_dtype() -> None:
    from statetree import _views

    tree = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "b": jnp.arange(6, dtype=jnp.int32).reshape(2, 3),  # shares a's 32-bit buffer
        "c": jnp.linspace(0, 1, 6, dtype=jnp.bfloat16).reshape(2, 3),
        "d": -jnp.arange(6.0).reshape(2, 3),  # a's shape and dtype: a's reader
    }
    packed = st.mutable(tree, packed=True)
    _views._slot_reader.cache_clear()
    for key, want in tree.items():
        got = packed[key][...]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    info = _views._slot_reader.cache_info()
    assert (info.misses, info.hits) == (3, 1)
    packed["d"][...] = jnp.full((2, 3), 7.0)  # an eager write, then a read of it
    np.testing.assert_array_equal(packed["d"][...], jnp.full((2, 3), 7.0))
    np.testing.assert_array_equal(packed["a"][...], tree["a"])  # its neighbour unchanged


def test_packed_writes_keep_no_tracer_under_checking_leaks() -> None:
    # The packed views remember values written and buffers read in a trace; JAX reports
    # a tracer alive after its trace as a leak, so under jax.checking_leaks they keep
    # nothing (reads then slice the buffer as it stands: the same numbers).
    model = st.mutable({"w": st.Param(jnp.ones(3)), "b": st.Param(jnp.zeros(2))}, packed=True)
    optimizer = st.Optimizer(model, optax.sgd(0.5))

    @jax.jit
    def step(model: st.Packed, optimizer: st.Optimizer) -> jax.Array:
        model["b"][...] = model["b"][...] + 1.0
        loss, grads = jax.value_and_grad(lambda w: jnp.sum(w**2))(model["w"][...])
        optimizer.update(model, {"w": grads, "b": jnp.zeros(2)})
        return loss + jnp.sum(model["b"][...])

    with jax.checking_leaks():
        out = step(model, optimizer)
    assert float(out) == 5.0
    np.testing.assert_array_equal(model["b"][...], jnp.ones(2))
    np.testing.assert_allclose(model["w"][...], jnp.zeros(3))
