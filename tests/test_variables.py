"""Variables: construction, reads, writes, kinds, errors.

Their array behaviour is tested in test_array_ops.py, their weak types in test_weak.py."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import statetree as st


@jax.jit
def increment(v: st.Variable) -> None:  # no return!
    v[...] += 1


@jax.jit
def write_row(v: st.Variable, row: jax.Array) -> None:
    v[1] = row


# ----------------------------------------------------------------- the guide: 101
def test_mutable_arrays_101_raw_ref() -> None:
    ref = jax.new_ref(jnp.array([1, 2, 3]))
    increment(ref)
    np.testing.assert_array_equal(ref[...], [2, 3, 4])


def test_mutable_variable_updates_in_place_under_jit() -> None:
    v = st.Variable(jnp.array([1, 2, 3]), mutable=True)
    assert v.mutable
    increment(v)
    np.testing.assert_array_equal(v[...], [2, 3, 4])
    increment(v)
    np.testing.assert_array_equal(v.value, [3, 4, 5])


def test_lowered_text_aliases_input_and_output() -> None:
    v = st.Variable(jnp.array([1, 2, 3]), mutable=True)
    text = increment.lower(v).as_text()
    # The buffer is both argument and result: XLA updates it in place.
    assert "tf.aliasing_output = 0" in text
    frozen = st.Variable(jnp.array([1, 2, 3]))
    assert "tf.aliasing_output" not in jax.jit(lambda v: v + 1).lower(frozen).as_text()


def test_partial_write_inside_jit() -> None:
    v = st.Variable(jnp.zeros((3, 2)), mutable=True)
    write_row(v, jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(v[...], [[0, 0], [1, 2], [0, 0]])


# ----------------------------------------------------------------- construction
def test_default_is_frozen_and_mode_switches_it() -> None:
    assert not st.Variable(jnp.zeros(2)).mutable
    with st.use_mutable_arrays(True):
        assert st.Variable(jnp.zeros(2)).mutable
        assert not st.Variable(jnp.zeros(2), mutable=False).mutable


def test_construction_takes_array_likes_and_variables() -> None:
    assert st.Variable([1.0, 2.0]).dtype == jnp.float32
    assert st.Variable(np.arange(3)).shape == (3,)
    src = st.Param(jnp.ones(2), mutable=True)
    copy_ = st.Param(src, mutable=True)
    copy_[...] = 5.0
    np.testing.assert_array_equal(src[...], [1, 1])  # a copy, not a second owner


def test_wrapping_a_ref_is_refused() -> None:
    with pytest.raises(st.RefValueError, match=r"value is a jax.Ref.*ref\[\.\.\.\]"):
        st.Variable(jax.new_ref(jnp.zeros(2)))


def test_metadata_is_read_only() -> None:
    v = st.Param(jnp.zeros(2), sharding_names=("embed",), init="zeros")
    assert dict(v.metadata) == {"sharding_names": ("embed",), "init": "zeros"}
    with pytest.raises(TypeError):
        v.metadata["init"] = "ones"  # type: ignore[index]


def test_metadata_survives_jit_and_tree_map() -> None:
    v = st.Param(jnp.zeros(2), mutable=True, tag="w")
    seen = {}

    @jax.jit
    def f(v: st.Param) -> None:
        seen["tag"] = v.metadata["tag"]
        seen["type"] = type(v)

    f(v)
    assert seen == {"tag": "w", "type": st.Param}
    mapped = jax.tree.map(lambda x: x + 1, st.freeze(v))
    assert type(mapped) is st.Param and mapped.metadata["tag"] == "w"


# ----------------------------------------------------------------- kinds
def test_kinds_declare_differentiability() -> None:
    assert st.Variable.differentiable and st.Param.differentiable
    assert not st.BatchStat.differentiable
    assert not st.Cache.differentiable
    assert not st.OptState.differentiable

    class Counter(st.Variable):
        differentiable = False

    c = Counter(jnp.array(0), mutable=True)
    increment(c)
    assert int(c[...]) == 1 and type(c) is Counter


def test_non_differentiable_write_inside_grad() -> None:
    # The guide's training loop updates batch statistics inside the loss.
    mean = st.BatchStat(jnp.zeros(3), mutable=True)

    @jax.jit
    def grads(p: jax.Array, x: jax.Array, mean: st.BatchStat) -> jax.Array:
        def loss(p: jax.Array) -> jax.Array:
            h = x * p
            mean[...] = 0.9 * mean[...] + 0.1 * h.mean(0)  # h depends on p
            return (h**2).sum()

        return jax.grad(loss)(p)

    g = grads(jnp.ones(3), jnp.ones((2, 3)), mean)
    np.testing.assert_allclose(g, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(mean[...], [0.1, 0.1, 0.1])


def test_differentiable_write_inside_grad_is_refused_by_jax() -> None:
    # The counterpart: a differentiable kind keeps JAX's rule (no silent stop_gradient).
    v = st.Variable(jnp.zeros(3), mutable=True)

    def loss(p: jax.Array) -> jax.Array:
        v[...] = p * 2
        return p.sum()

    with pytest.raises(Exception, match="differentiated value"):
        jax.grad(loss)(jnp.ones(3))


# JAX 0.11 made jax.grad, jax.value_and_grad and jax.jacrev refuse Ref arguments
# themselves, before statetree unflattens them; the other transforms still reach
# statetree's own advice.
JAX_REFUSES_REF_GRADS = jax.__version_info__ >= (0, 11)


def test_mutable_variable_given_to_grad_is_refused_on_every_jax() -> None:
    params = {"w": st.Param(jnp.ones(2), mutable=True)}

    def loss(p: dict) -> jax.Array:
        return (p["w"] ** 2).sum()

    ours = r"passed as a differentiated argument.*Freeze it first.*st\.freeze\(params\)"
    for transform in (jax.grad, jax.value_and_grad, jax.jacrev):
        if JAX_REFUSES_REF_GRADS:
            with pytest.raises(TypeError, match=r"Ref-typed argument.*with_refs"):
                transform(loss)(params)
        else:
            with pytest.raises(st.RefValueError, match=ours):
                transform(loss)(params)
    tangents = {"w": st.Param(jnp.ones(2))}
    for call in (
        lambda: jax.vjp(loss, params),
        lambda: jax.jvp(loss, (params,), (tangents,)),
        lambda: jax.jacfwd(loss)(params),
        lambda: jax.hessian(loss)(params),
        lambda: jax.linearize(loss, params),
    ):
        with pytest.raises(st.RefValueError, match=ours):
            call()
    g = jax.grad(loss)(st.freeze(params))  # the fix, the same on every JAX
    np.testing.assert_allclose(g["w"][...], [2.0, 2.0])
    assert params["w"].mutable and params["w"][...].tolist() == [1.0, 1.0]  # untouched


def test_mutable_state_not_differentiated_may_stay_mutable() -> None:
    # What the advice says: state the loss only updates is closed over, or passed in an
    # argument grad does not differentiate (plumbing, on every JAX).
    stats = st.BatchStat(jnp.zeros(2), mutable=True)

    def loss(w: jax.Array, stats: st.BatchStat) -> jax.Array:
        stats[...] = w * 3
        return (w**2).sum()

    g = jax.grad(loss)(jnp.ones(2), stats)
    assert g.tolist() == [2.0, 2.0] and stats[...].tolist() == [3.0, 3.0]


# ----------------------------------------------------------------- writes
def test_frozen_write_raises() -> None:
    v = st.Param(jnp.zeros(2))
    with pytest.raises(st.FrozenVariableError, match=r"frozen Param float32\[2\].*st\.mutable"):
        v[...] = 1.0
    with pytest.raises(st.FrozenVariableError, match="frozen"):
        v.value = jnp.ones(2)
    with pytest.raises(TypeError):  # the builtin it refines
        v[0] = 1.0
    np.testing.assert_array_equal(v[...], [0, 0])


def test_frozen_write_inside_jit_raises() -> None:
    with pytest.raises(st.FrozenVariableError, match="lost when the call returns"):
        increment(st.Variable(jnp.zeros(2)))


def test_writes_broadcast_and_cast_like_numpy() -> None:
    v = st.Variable(jnp.ones((2, 3)), mutable=True)
    v[...] = 0  # Python int into float: fills
    np.testing.assert_array_equal(v[...], np.zeros((2, 3)))
    v[...] = jnp.arange(3)  # broadcast a row; int32 -> float32 is same_kind
    np.testing.assert_array_equal(v[...], [[0, 1, 2], [0, 1, 2]])
    assert v.dtype == jnp.float32
    v[:, 0] = 7.0
    np.testing.assert_array_equal(v[:, 0], [7, 7])
    v[jnp.array([0])] = jnp.array([[9.0, 9.0, 9.0]])
    np.testing.assert_array_equal(v[0], [9, 9, 9])
    h = st.Variable(jnp.zeros(2, jnp.bfloat16), mutable=True)
    h[...] = jnp.ones(2, jnp.float32)  # float32 -> bfloat16: same kind
    assert h.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("shape", "idx", "value_shape"),
    [
        ((3,), Ellipsis, (1, 3)),
        ((3,), Ellipsis, (1, 1, 3)),
        ((), Ellipsis, (1, 1)),
        ((2, 3), 0, (1, 3)),
        ((2, 3), slice(0, 1), (1, 1, 3)),
        ((2, 3), Ellipsis, (1, 1, 1)),
        ((3,), Ellipsis, (2, 3)),  # not size 1: both refuse
        ((3,), Ellipsis, (1, 2, 3)),
        ((2, 3), 0, (2, 1, 3)),
    ],
)
def test_extra_leading_axes_follow_numpy(shape: tuple, idx: object, value_shape: tuple) -> None:
    value = np.arange(np.prod(value_shape), dtype=np.float32).reshape(value_shape) + 1
    expected = np.zeros(shape, np.float32)
    v = st.Variable(jnp.zeros(shape), mutable=True)
    try:
        expected[idx] = value
    except ValueError:
        with pytest.raises(st.VariableWriteError, match=r"does not broadcast to the indexed"):
            v[idx] = value
        np.testing.assert_array_equal(v[...], np.zeros(shape))
    else:
        v[idx] = value
        np.testing.assert_array_equal(v[...], expected)


def test_write_shape_error_names_kind_and_shapes() -> None:
    v = st.Param(jnp.zeros((2, 3)), mutable=True)
    with pytest.raises(st.VariableWriteError, match=r"shape \(4,\).*Param float32\[2,3\]"):
        v[...] = jnp.ones(4)
    with pytest.raises(ValueError, match=r"indexed shape \(3,\)"):
        v[0] = jnp.ones(2)
    np.testing.assert_array_equal(v[...], np.zeros((2, 3)))


@pytest.mark.parametrize("value", [1.5, jnp.array([1.5, 2.5]), np.float32(1.0)])
def test_write_dtype_error_for_unsafe_casts(value: object) -> None:
    v = st.Variable(jnp.zeros(2, jnp.int32), mutable=True)
    with pytest.raises(st.VariableWriteError, match=r"same_kind.*-> int32.*astype"):
        v[...] = value
    np.testing.assert_array_equal(v[...], [0, 0])


@pytest.mark.parametrize(("dtype", "value"), [(jnp.uint8, -1), (jnp.int8, 300), (jnp.int8, -129)])
def test_out_of_range_python_int_names_variable_value_and_range(dtype: object, value: int) -> None:
    v = st.BatchStat(jnp.zeros(2, dtype), mutable=True)
    with pytest.raises(OverflowError, match="out of bounds"):
        np.zeros(2, np.dtype(dtype))[...] = value  # NumPy refuses it too
    name = jnp.dtype(dtype).name
    low, high = jnp.iinfo(dtype).min, jnp.iinfo(dtype).max
    with pytest.raises(
        st.VariableWriteError,
        match=rf"Cannot write {value} into mutable BatchStat {name}\[2\]: .*range of {name} "
        rf"\({low} to {high}\).*jnp\.asarray\(x\)\.astype\({name}\)\.$",
    ):
        v[0] = value
    np.testing.assert_array_equal(v[...], [0, 0])


def test_python_scalars_and_weak_values_take_the_variables_dtype() -> None:
    u = st.Variable(jnp.ones(3, jnp.uint32), mutable=True)
    u[...] = 0  # a Python int has no sign of its own
    u[1] = jnp.asarray(7)  # weakly typed int32 from a Python int
    np.testing.assert_array_equal(u[...], [0, 7, 0])
    assert u.dtype == jnp.uint32
    b = st.Variable(jnp.zeros(2, bool), mutable=True)
    b[...] = True
    with pytest.raises(st.VariableWriteError, match="a Python int into mutable Variable bool"):
        b[...] = 1
    with pytest.raises(st.VariableWriteError, match="dtype int32 into mutable Variable uint32"):
        u[...] = jnp.array([1, 2, 3], jnp.int32)  # a strong signed int: not same_kind


def test_prng_key_variables() -> None:
    keys = st.Variable(jax.random.key(0), mutable=True)
    assert repr(keys).startswith("Variable(key<fry>[], mutable=True")
    keys[...] = jax.random.split(keys[...])[0]
    with pytest.raises(st.VariableWriteError, match="key<fry>"):
        keys[...] = jnp.zeros((), jnp.uint32)


def test_writing_a_ref_is_refused() -> None:
    v = st.Variable(jnp.zeros(2), mutable=True)
    with pytest.raises(st.RefValueError, match=r"v\[\.\.\.\] = ref\[\.\.\.\]"):
        v[...] = jax.new_ref(jnp.ones(2))


def test_writing_a_variable_writes_its_value() -> None:
    v = st.Variable(jnp.zeros(2), mutable=True)
    v[...] = st.Variable(jnp.ones(2))
    np.testing.assert_array_equal(v[...], [1, 1])


# ----------------------------------------------------------------- reads, copies, repr
@pytest.mark.parametrize("mutable", [False, True])
def test_sharding_of_a_traced_variable_is_its_abstract_sharding(mutable: bool) -> None:
    seen = []

    @jax.jit
    def f(v: st.Variable) -> None:
        seen.append((v.sharding, jax.typeof(v[...]).sharding))

    f(st.Variable(jnp.ones(2), mutable=mutable))
    ((traced, of_value),) = seen
    assert traced == of_value and traced.spec == jax.sharding.PartitionSpec(None)


def test_indexing_follows_arrays_including_none() -> None:
    v = st.Variable(jnp.arange(6.0).reshape(2, 3), mutable=True)
    assert v[None].shape == (1, 2, 3)  # a raw Ref would silently drop None
    assert v[..., None].shape == (2, 3, 1)
    np.testing.assert_array_equal(v[1, 1:], [4, 5])
    np.testing.assert_array_equal(v[jnp.array([1, 0]), 0], [3, 0])

    @jax.jit
    def read(v: st.Variable) -> jax.Array:
        return v[None, 0]

    assert read(v).shape == (1, 3)


def test_copy_and_pickle_keep_the_kind() -> None:
    v = st.Param(jnp.arange(3.0), tag=1)
    c = copy.deepcopy(v)
    assert type(c) is st.Param and c.metadata["tag"] == 1
    np.testing.assert_array_equal(c[...], v[...])
    p = pickle.loads(pickle.dumps(v))
    assert type(p) is st.Param
    np.testing.assert_array_equal(p[...], v[...])


def test_repr_shows_kind_shape_form_and_small_values() -> None:
    assert repr(st.Param(jnp.array([1.0, 2.0]), mutable=True, tag="w")) == (
        "Param(float32[2], mutable=True, tag='w', value=[1., 2.])"
    )
    assert repr(st.BatchStat(jnp.zeros((10, 10)))) == "BatchStat(float32[10,10], mutable=False)"
    seen = []
    jax.jit(lambda v: seen.append(repr(v)))(st.Cache(jnp.zeros(2), mutable=True))
    assert seen == ["Cache(float32[2], mutable=True, traced)"]


def test_is_mutable() -> None:
    assert st.is_mutable(st.Variable(jnp.zeros(1), mutable=True))
    assert not st.is_mutable(st.Variable(jnp.zeros(1)))
    assert st.is_mutable(jax.new_ref(jnp.zeros(1)))
    assert not st.is_mutable(jnp.zeros(1))
    assert not st.is_mutable("text")
