"""The one write path (statetree._write): remat-safe state, checks before any write, static
index ranges, NumPy scalars, values that are no array, and every writer going through it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import statetree as st
from statetree._write import bulk as _bulk
from statetree._write import plan as _plan
from statetree._write import storage as _storage

# ----------------------------------------------------------------- 14.1 remat


def _counting_loss(count: st.Variable, remat):
    def layer(w: jax.Array, x: jax.Array) -> jax.Array:
        count[...] += 1
        return jnp.tanh(x @ w)

    return lambda w: remat(layer)(w, jnp.ones((2, 3))).sum()


@pytest.mark.parametrize("remat", [jax.checkpoint, jax.remat], ids=["checkpoint", "remat"])
def test_a_write_under_remat_happens_once(remat) -> None:
    # The example: a counter bumped inside jax.checkpoint under jax.grad was
    # bumped twice (the backward pass replayed the write).
    count = st.BatchStat(jnp.array(0), mutable=True)
    jax.grad(_counting_loss(count, remat))(jnp.eye(3))
    assert int(count[...]) == 1
    jax.jit(jax.grad(_counting_loss(count, remat)))(jnp.eye(3))
    assert int(count[...]) == 2


def test_non_differentiable_kinds_get_no_grad_no_remat_refs() -> None:
    class Counter(st.Variable):  # a user kind
        differentiable = False

    made = {
        "stat": st.BatchStat(jnp.zeros(2), mutable=True),
        "cache": st.Cache(jnp.zeros(2), mutable=True),
        "opt": st.OptState(jnp.zeros(2), mutable=True),
        "user": Counter(jnp.zeros(2), mutable=True),
    }
    converted = st.mutable({"stat": st.BatchStat(jnp.zeros(2)), "w": st.Param(jnp.zeros(2))})
    with st.use_mutable_arrays(True):
        made["default"] = st.Cache(jnp.zeros(2))
    for name, v in {**made, "converted": converted["stat"]}.items():
        assert jax.typeof(v._raw).kind == "no_grad_no_remat", name
    assert jax.typeof(converted["w"]._raw).kind is None  # differentiable: JAX's default
    assert jax.typeof(st.Param(jnp.zeros(2), mutable=True)._raw).kind is None


def test_batch_statistics_in_a_scan_under_remat_are_written_once_per_step() -> None:
    stats = st.BatchStat(jnp.zeros(3), mutable=True)
    steps = st.BatchStat(jnp.array(0), mutable=True)

    def loss(w: jax.Array) -> jax.Array:
        @jax.checkpoint
        def body(h: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
            h = jnp.tanh(h @ w + x)
            stats[...] = stats[...] + h  # a running sum: replayed, it would double
            steps[...] += 1
            return h, None

        h, _ = jax.lax.scan(body, jnp.ones(3), jnp.ones((4, 3)))
        return h.sum()

    w = 0.1 * jnp.eye(3)
    grad = jax.jit(jax.grad(loss))(w)

    def reference(w: jax.Array) -> jax.Array:  # the same sums, computed functionally
        def body(carry: tuple, x: jax.Array) -> tuple:
            h, total = carry
            h = jnp.tanh(h @ w + x)
            return (h, total + h), None

        (_, total), _ = jax.lax.scan(body, (jnp.ones(3), jnp.zeros(3)), jnp.ones((4, 3)))
        return total

    assert int(steps[...]) == 4
    np.testing.assert_allclose(stats[...], reference(w), rtol=1e-6)
    np.testing.assert_allclose(grad, jax.grad(loss_free)(w), rtol=1e-6)


def loss_free(w: jax.Array) -> jax.Array:
    """The scan's loss without state, for the gradient comparison."""

    def body(h: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
        return jnp.tanh(h @ w + x), None

    h, _ = jax.lax.scan(body, jnp.ones(3), jnp.ones((4, 3)))
    return h.sum()


def test_packed_counter_under_remat_is_written_once() -> None:
    # A packed buffer holding a Param and a BatchStat takes the no-grad-no-remat kind.
    packed = st.mutable(
        {"w": st.Param(jnp.eye(3)), "count": st.BatchStat(jnp.array(0))}, packed=True
    )
    assert [jax.typeof(b).kind for b in packed.buffers] == ["no_grad_no_remat"]

    @jax.jit
    def step(model: st.Packed, x: jax.Array) -> jax.Array:
        def loss(w: jax.Array) -> jax.Array:
            def layer(w: jax.Array, x: jax.Array) -> jax.Array:
                model["count"][...] += 1
                return jnp.tanh(x @ w)

            return jax.checkpoint(layer)(w, x).sum()

        return jax.grad(loss)(model["w"][...])

    grad = step(packed, jnp.ones((2, 3)))
    assert int(packed["count"][...]) == 1
    np.testing.assert_allclose(
        grad, jax.grad(lambda w: jnp.tanh(jnp.ones((2, 3)) @ w).sum())(jnp.eye(3)), rtol=1e-6
    )


def test_traced_packing_keeps_kinds_apart() -> None:
    # Inside a transform, values may be differentiated: kinds get buffers of their own
    # there, so a differentiable one keeps JAX's default Ref kind.
    kinds: list[str] = []

    @jax.jit
    def f(x: jax.Array) -> jax.Array:
        packed = st.mutable({"w": st.Param(x), "n": st.BatchStat(x)}, packed=True)
        kinds.extend(sorted(str(jax.typeof(b).kind) for b in packed.buffers))
        return packed["w"][...] + packed["n"][...]

    np.testing.assert_array_equal(f(jnp.ones(2)), [2.0, 2.0])
    assert kinds == ["None", "no_grad_no_remat"]


# ----------------------------------------------------------------- 14.2 no half-update


def _deleted(x: jax.Array) -> jax.Array:
    x = jnp.array(x)
    x.delete()
    return x


def _leaked_tracer() -> jax.Array:
    leaked = []
    jax.jit(lambda x: leaked.append(x) or x)(jnp.ones(2))
    return leaked[0]


def test_a_plan_refusing_many_paths_names_twenty_and_counts_the_rest() -> None:
    model = st.mutable({f"v{i:02d}": jnp.zeros(2) for i in range(30)})
    wrong = st.State({(f"v{i:02d}",): jnp.zeros(3) for i in range(30)})
    cut = r"30 path\(s\)(?s:.*)\['v19'\].*\n  \.\.\. and 10 more$"
    with pytest.raises(st.StructureError, match=cut):
        st.update(model, wrong)


@pytest.mark.parametrize("bad", ["deleted", "tracer"])
def test_update_checks_every_value_before_the_first_write(bad: str) -> None:
    model = st.mutable({"a": jnp.zeros(2), "b": jnp.zeros(2), "c": jnp.zeros(2)})
    value = _deleted(jnp.ones(2)) if bad == "deleted" else _leaked_tracer()
    new = st.State({("a",): jnp.ones(2), ("b",): value, ("c",): jnp.ones(2)})
    with pytest.raises(st.UnreadableValueError, match=r"nothing was written:\n  \['b'\]: "):
        st.update(model, new)
    for k in "abc":  # bit-for-bit unchanged
        np.testing.assert_array_equal(model[k][...], np.zeros(2, np.float32))


def test_update_with_a_donated_array_names_its_path() -> None:
    model = st.mutable({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    ones = jnp.ones(2)
    jax.jit(lambda x: x + 1, donate_argnums=0)(ones)
    if not ones.is_deleted():  # pragma: no cover - a backend without donation
        pytest.skip("this backend does not donate buffers")
    with pytest.raises(st.UnreadableValueError, match=r"\['b'\]: .*donate_argnums"):
        st.update(model, st.State({("a",): jnp.ones(2), ("b",): ones}))
    assert float(model["a"][0]) == 0.0


def test_mixed_problems_raise_one_structure_error_naming_each_path() -> None:
    model = st.mutable({"a": jnp.zeros(2), "b": jnp.zeros(2)})
    new = st.State({("a",): jnp.ones(3), ("b",): _deleted(jnp.ones(2))})
    with pytest.raises(st.StructureError, match=r"(?s)\['a'\]: expected.*\['b'\]: .*deleted"):
        st.update(model, new)


@settings(max_examples=25, deadline=None)
@given(hs.lists(hs.sampled_from(["ok", "deleted", "shape", "dtype"]), min_size=1, max_size=6))
def test_update_is_all_or_nothing(kinds: list[str]) -> None:
    model = st.mutable({f"v{i}": jnp.zeros(2) for i in range(len(kinds))})
    make = {
        "ok": lambda: jnp.full(2, 7.0),
        "deleted": lambda: _deleted(jnp.ones(2)),
        "shape": lambda: jnp.ones(3),
        "dtype": lambda: jnp.ones(2, jnp.int32),
    }
    new = st.State({(f"v{i}",): make[k]() for i, k in enumerate(kinds)})
    if all(k == "ok" for k in kinds):
        st.update(model, new)
        assert all(float(model[f"v{i}"][0]) == 7.0 for i in range(len(kinds)))
        return
    with pytest.raises(st.StateTreeError, match="nothing was written"):
        st.update(model, new)
    assert all(float(model[f"v{i}"][0]) == 0.0 for i in range(len(kinds)))


def test_a_leaked_variable_cannot_be_written() -> None:
    leaked = []

    @jax.jit
    def f(x: jax.Array) -> jax.Array:
        v = st.Variable(x, mutable=True)
        leaked.append(v)
        return x

    f(jnp.ones(2))
    with pytest.raises(st.UnreadableValueError, match=r"escaped the jax\.jit"):
        leaked[0][...] = 1.0


def test_mutable_of_a_deleted_array_names_the_path_and_converts_nothing() -> None:
    tree = {"ok": jnp.ones(2), "gone": _deleted(jnp.ones(2))}
    for packed in (False, True):
        with pytest.raises(st.UnreadableValueError, match=r"\['gone'\]: was deleted"):
            st.mutable(tree, packed=packed)
    with pytest.raises(st.UnreadableValueError, match=r"Param\(value\): the value was deleted"):
        st.Param(_deleted(jnp.ones(2)), mutable=True)


# ----------------------------------------------------------------- 14.3 index range


@jax.jit
def _write_at_5(v: st.Variable) -> None:
    v[5] = 1.0


def test_static_out_of_range_write_is_refused_eagerly_and_in_jit() -> None:
    v = st.Param(jnp.zeros(3), mutable=True)
    with pytest.raises(st.VariableIndexError, match=r"Index 5 .*Param float32\[3\].*\(3,\)"):
        v[5] = 1.0
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 3"):
        _write_at_5(v)
    with pytest.raises(IndexError, match=r"Index 5 does not fit"):
        v[5]
    np.testing.assert_array_equal(v[...], np.zeros(3, np.float32))


@settings(max_examples=30, deadline=None)
@given(
    shape=hs.lists(hs.integers(1, 4), min_size=1, max_size=2).map(tuple),
    index=hs.integers(-6, 6),
)
def test_integer_indices_follow_numpy(shape: tuple, index: int) -> None:
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    v = st.Variable(data, mutable=True)
    try:
        expected = data[index]
    except IndexError:
        with pytest.raises(st.VariableIndexError):
            v[index]
        with pytest.raises(st.VariableIndexError):
            v[index] = 0.0
        np.testing.assert_array_equal(v[...], data)
        return
    np.testing.assert_array_equal(v[index], expected)
    v[index] = -1.0
    data[index] = -1.0
    np.testing.assert_array_equal(v[...], data)


@settings(max_examples=25, deadline=None)
@given(
    n=hs.integers(0, 5),
    start=hs.none() | hs.integers(-8, 8),
    stop=hs.none() | hs.integers(-8, 8),
    step=hs.none() | hs.integers(1, 3),
)
def test_slices_clip_as_in_numpy(n: int, start: int, stop: int, step: int) -> None:
    data = np.arange(n, dtype=np.float32)
    v = st.Variable(data, mutable=True)
    idx = slice(start, stop, step)
    np.testing.assert_array_equal(v[idx], data[idx])
    v[idx] = 9.0
    data[idx] = 9.0
    np.testing.assert_array_equal(v[...], data)


def test_static_index_arrays_are_range_checked_and_traced_ones_are_left_to_jax() -> None:
    v = st.Variable(jnp.zeros(3), mutable=True)
    with pytest.raises(st.VariableIndexError, match="index 5 is out of bounds"):
        v[np.array([0, 5])] = 1.0
    with pytest.raises(st.VariableIndexError, match="index 7 is out of bounds"):
        v[jnp.array([7])]

    @jax.jit
    def write(v: st.Variable, i: jax.Array) -> None:
        v[i] = 2.0

    write(v, jnp.array(1))
    np.testing.assert_array_equal(v[...], [0, 2, 0])


# ----------------------------------------------------------------- 14.4 NumPy scalars

_INTS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32]


@settings(max_examples=40, deadline=None)
@given(
    target=hs.sampled_from(_INTS),
    source=hs.sampled_from([*_INTS, np.int64, np.uint64]),
    value=hs.integers(-(2**33), 2**33),
)
def test_numpy_integer_scalars_behave_as_python_ints(target, source, value: int) -> None:
    info = np.iinfo(source)
    value = max(info.min, min(info.max, value))
    v = st.Variable(jnp.zeros(2, target), mutable=True)
    w = st.Variable(jnp.zeros(2, target), mutable=True)
    try:
        v[...] = value
        python = None
    except st.VariableWriteError as e:
        python = e
    if python is None:
        w[...] = source(value)
        np.testing.assert_array_equal(w[...], v[...])
        assert int(w[0]) == value  # never wrapped
    else:
        with pytest.raises(st.VariableWriteError, match="out of the range"):
            w[...] = source(value)
        np.testing.assert_array_equal(w[...], np.zeros(2, target))


def test_numpy_float_scalars_take_the_variables_dtype_and_are_refused_by_ints() -> None:
    v = st.Variable(jnp.zeros(2, jnp.bfloat16), mutable=True)
    v[...] = np.float64(0.5)
    assert v.dtype == jnp.bfloat16 and float(v[0]) == 0.5
    n = st.Variable(jnp.zeros(2, jnp.int32), mutable=True)
    with pytest.raises(st.VariableWriteError, match="float -> int32"):
        n[...] = np.float32(1.5)


# ----------------------------------------------------------------- 14.8 what no array is


@pytest.mark.parametrize(
    ("value", "match"),
    [("abc", r"the str 'abc'"), (None, "write None"), ({"a": 1}, "the dict")],
)
def test_writing_what_is_no_array_names_the_variable(value: object, match: str) -> None:
    v = st.BatchStat(jnp.zeros(2), mutable=True)
    with pytest.raises(st.VariableWriteError, match=match + r".*BatchStat float32\[2\]"):
        v[...] = value
    np.testing.assert_array_equal(v[...], np.zeros(2, np.float32))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"a": jnp.ones(2)}, r"Param\(value\): value is a dict"),
        ((jnp.ones(2), jnp.ones(2)), r"a tuple holding arrays.*jnp\.stack"),
        ([np.ones(2)], r"a list holding arrays"),
        ("abc", "value is a str"),
        (None, "value is None"),
    ],
)
def test_a_variable_holds_one_array(value: object, match: str) -> None:
    with pytest.raises(st.VariableWriteError, match=match):
        st.Param(value)


def test_nested_lists_of_numbers_still_make_one_array() -> None:
    assert st.Variable([[1, 2], [3, 4]]).shape == (2, 2)
    assert st.Variable((1.0, 2.0)).dtype == jnp.float32


def test_mutable_must_be_a_bool() -> None:
    from typeguard import suppress_type_checks

    # typeguard would refuse it first in the test run: this checks statetree's own check.
    with (
        suppress_type_checks(),
        pytest.raises(TypeError, match=r"mutable='false'\): mutable must be True"),
    ):
        st.Variable(jnp.zeros(2), mutable="false")  # type: ignore[arg-type]


# ----------------------------------------------------------------- one write path


def test_update_exact_false_follows_numpy_assignment() -> None:
    model = st.mutable({"n": jnp.zeros(3, jnp.int8), "w": jnp.zeros(3)})
    st.update(model, st.State({("n",): np.int64(5), ("w",): 2}), exact=False)
    np.testing.assert_array_equal(model["n"][...], [5, 5, 5])
    with pytest.raises(st.VariableWriteError, match=r"(?s)nothing was written.*\['n'\].*300"):
        st.update(model, st.State({("n",): 300, ("w",): 1.0}), exact=False)
    np.testing.assert_array_equal(model["w"][...], [2, 2, 2])
    with pytest.raises(st.StructureError, match=r"\['n'\]: expected int8\[3\], got int32\[3\]"):
        st.update(model, st.State({("n",): jnp.ones(3, jnp.int32)}))


def test_every_writer_goes_through_the_plan(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import equinox as eqx
    from statetree.adapters import dicts
    from statetree.adapters import equinox as steqx

    calls: list[str] = []
    prepare = _plan.prepare

    def counting(target, new, idx, exact):
        calls.append("exact" if exact else "numpy")
        return prepare(target, new, idx, exact)

    monkeypatch.setattr(_plan, "prepare", counting)

    def seen(action) -> list[str]:
        calls.clear()
        action()
        return sorted(set(calls))

    model = st.mutable({"w": st.Param(jnp.ones(2))})
    opt = st.Optimizer(model, optax.sgd(0.1))
    assert seen(lambda: model["w"].__setitem__(..., 2.0)) == ["numpy"]
    assert seen(lambda: st.update(model, st.state(st.freeze(model)))) == ["exact"]
    assert seen(lambda: opt.update(model, {"w": jnp.ones(2)})) == ["numpy"]
    st.save(tmp_path / "ckpt", model)
    assert seen(lambda: st.restore(tmp_path / "ckpt", model)) == ["exact"]
    state = st.state(model)
    assert seen(lambda: st.restore(tmp_path / "ckpt", state)) == ["exact"]

    bn, eqx_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="ema")
    eqx_state = steqx.mutable(eqx_state)
    # Equinox's State.set refuses a change of dtype; the converted state keeps that rule.
    assert seen(lambda: eqx_state.set(bn.ema_state_index, (jnp.ones(3), jnp.ones(3)))) == ["exact"]

    def apply(variables, x, mutable):
        return x, {"batch_stats": {"n": variables["batch_stats"]["n"] + 1}}

    collections = dicts.from_collections(
        {"params": {"w": jnp.ones(())}, "batch_stats": {"n": jnp.zeros(())}}
    )
    bound = dicts.bind(apply, collections)
    assert seen(lambda: bound(1.0)) == ["exact"]


# ------------------------------------------------- the plan's fast path (issue 15)
# st.update of many values checks the common case (concrete arrays of each Ref's exact
# type and sharding, or NumPy arrays of its shape and dtype) in C-level passes instead
# of one `prepare` per value; every other value takes `prepare`, with its messages.
N_FAST = 20  # at least statetree._write.bulk.MIN_GROUP: the fast path's threshold


def _tree_of(n: int = N_FAST, kind: type = st.Param) -> dict[str, st.Variable]:
    return {f"v{i:02d}": kind(jnp.full(3, i, jnp.float32), mutable=True) for i in range(n)}


def _prepares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per call of `_plan.prepare` (the per-value path)."""
    calls: list[int] = []
    prepare = _plan.prepare

    def counting(target, new, idx, exact):
        calls.append(1)
        return prepare(target, new, idx, exact)

    monkeypatch.setattr(_plan, "prepare", counting)
    return calls


@pytest.mark.parametrize("kind", [st.Param, st.BatchStat], ids=["Param", "BatchStat"])
@pytest.mark.parametrize("form", ["arrays", "variables", "numpy"])
def test_update_of_many_values_takes_the_fast_path(
    kind: type, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _tree_of(kind=kind)
    new = {k: jnp.full(3, 100 + i, jnp.float32) for i, k in enumerate(tree)}
    values: dict[str, object] = dict(new)
    if form == "variables":
        values = {k: kind(v) for k, v in new.items()}
    elif form == "numpy":
        values = {k: np.array(v) for k, v in new.items()}
    calls = _prepares(monkeypatch)
    st.update(tree, st.State({(k,): v for k, v in values.items()}))
    assert calls == []  # no value went through prepare
    for k, v in new.items():
        np.testing.assert_array_equal(tree[k][...], v)

    # The Refs own fresh buffers: an in-place step donates them, the caller's arrays
    # (and NumPy memory) stay intact.
    @jax.jit
    def zero(tree: dict[str, st.Variable]) -> None:
        for v in tree.values():
            v[...] = v[...] * 0

    zero(tree)
    first = values["v00"]
    raw = first._raw if isinstance(first, st.Variable) else first
    assert not isinstance(raw, jax.Array) or not raw.is_deleted()
    np.testing.assert_array_equal(np.asarray(new["v00"]), [100.0] * 3)
    if form == "numpy":
        assert isinstance(first, np.ndarray)
        first[...] = -1.0  # the Ref does not alias it
        assert tree["v00"][...].tolist() == [0.0] * 3


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(jnp.full(3, 7, jnp.int32), id="wrong-dtype"),
        pytest.param(jnp.full((1, 3), 7, jnp.float32), id="wrong-shape"),
        pytest.param(np.full(3, 7, np.int32), id="numpy-wrong-dtype"),
    ],
)
def test_one_value_off_the_fast_path_goes_through_prepare(odd, monkeypatch) -> None:
    tree = _tree_of()
    values = {(k,): jnp.full(3, 50, jnp.float32) for k in tree}
    values[("v07",)] = odd
    calls = _prepares(monkeypatch)
    with pytest.raises(st.StructureError, match=r"(?s)1 path\(s\).*\['v07'\]: expected float32"):
        st.update(tree, st.State(values))
    assert len(calls) == N_FAST  # every value was checked one by one
    assert [float(v[0]) for v in tree.values()] == [float(i) for i in range(N_FAST)]


def test_weakly_typed_values_take_the_per_value_path(monkeypatch) -> None:
    tree = _tree_of()
    values = {(k,): jnp.full(3, 2, jnp.float32) for k in tree}
    calls = _prepares(monkeypatch)
    st.update(tree, st.State(values))
    assert calls == []  # strong float32 everywhere: the fast path
    weak = jnp.full(3, 9.0)  # from a Python float: weakly typed float32[3]
    assert weak.weak_type
    st.update(tree, st.State({**values, ("v05",): weak}))
    assert len(calls) == N_FAST  # one weak value: all checked one by one
    assert tree["v05"][...].tolist() == [9.0] * 3
    assert not tree["v05"][...].weak_type  # the Ref keeps its own (strong) type


def test_values_with_another_sharding_take_the_per_value_path(monkeypatch) -> None:
    tree = _tree_of()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    named = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    values = {(k,): jnp.full(3, 4, jnp.float32) for k in tree}
    values[("v02",)] = jax.device_put(jnp.full(3, 8, jnp.float32), named)
    calls = _prepares(monkeypatch)
    st.update(tree, st.State(values))
    assert len(calls) == N_FAST
    assert tree["v02"][...].tolist() == [8.0] * 3 and tree["v01"][...].tolist() == [4.0] * 3


def test_a_deleted_value_refuses_the_whole_update() -> None:
    tree = _tree_of()
    values = {(k,): jnp.full(3, 4, jnp.float32) + 0 for k in tree}
    values[("v11",)].delete()
    with pytest.raises(st.UnreadableValueError, match=r"(?s)\['v11'\]: .*was deleted"):
        st.update(tree, st.State(values))
    assert [float(v[0]) for v in tree.values()] == [float(i) for i in range(N_FAST)]


def test_numpy_values_off_the_fast_path_keep_their_checks(monkeypatch) -> None:
    tree = _tree_of()
    values = {(k,): np.full(3, 1.0, np.float32) for k in tree}
    values[("v09",)] = np.full(3, 1.0, np.float64)  # another dtype
    calls = _prepares(monkeypatch)
    with pytest.raises(st.StructureError, match=r"\['v09'\]: expected float32\[3\], got float64"):
        st.update(tree, st.State(values))
    assert len(calls) == N_FAST and tree["v00"][...].tolist() == [0.0] * 3
    values[("v09",)] = np.full(3, 1.0, np.float32)
    st.update(tree, st.State(values), exact=False)  # NumPy's rules: the same result
    assert [v[...].tolist() for v in tree.values()] == [[1.0] * 3] * N_FAST


def test_tracers_inside_jit_are_written_ref_by_ref() -> None:
    tree = _tree_of()

    @jax.jit
    def step(tree, x):
        st.update(tree, st.State({(k,): x + i for i, k in enumerate(tree)}))

    step(tree, jnp.full(3, 10.0))
    assert [float(v[0]) for v in tree.values()] == [10.0 + i for i in range(N_FAST)]


def test_the_plan_keeps_the_order_of_accepted_and_other_writes() -> None:
    tree = _tree_of()
    targets = list(tree.values())
    plan = _plan.WritePlan("test")
    plan.add_all(targets, [jnp.full(3, 1, jnp.float32)] * N_FAST, list(range(N_FAST)))
    plan.add(targets[3], 2.0)  # later: wins
    plan.commit()
    assert targets[3][...].tolist() == [2.0] * 3 and targets[4][...].tolist() == [1.0] * 3
    plan = _plan.WritePlan("test")
    plan.add(targets[3], 5.0)
    plan.add_all(targets, [jnp.full(3, 6, jnp.float32)] * N_FAST, list(range(N_FAST)))
    plan.commit()
    assert targets[3][...].tolist() == [6.0] * 3


def test_a_closed_over_tree_is_read_when_the_jitted_function_runs() -> None:
    # freeze/unbox of many Refs inside jax.jit: each Ref is read when the compiled
    # function runs (a copy taken while tracing was a stale constant).
    tree = _tree_of()
    frozen = jax.jit(lambda: st.freeze(tree)["v01"][...])
    unboxed = jax.jit(lambda: st.unbox(tree)["v02"])
    frozen(), unboxed()
    tree["v01"][...] = 11.0
    tree["v02"][...] = 12.0
    assert frozen().tolist() == [11.0] * 3 and unboxed().tolist() == [12.0] * 3


def test_numpy_values_of_any_layout_and_dtype_take_the_fast_path(monkeypatch) -> None:
    # What a restore hands over: strided slices of a larger buffer, bfloat16 among them.
    tree = {f"v{i:02d}": st.Param(jnp.zeros(3, jnp.bfloat16), mutable=True) for i in range(N_FAST)}
    columns = np.arange(3 * N_FAST, dtype=np.float32).reshape(3, N_FAST).astype(jnp.bfloat16)
    calls = _prepares(monkeypatch)
    st.update(tree, st.State({(k,): columns[:, i] for i, k in enumerate(tree)}))
    assert calls == []
    assert tree["v01"][...].tolist() == [1.0, 21.0, 41.0]
    assert tree["v01"][...].dtype == jnp.bfloat16


# ----------------------------------------------------------------- many Refs at once
# st.freeze, st.unbox and st.update read and write groups of at least bulk.MIN_GROUP
# Refs of one shape, dtype and sharding in one dispatch per chunk (statetree._write.bulk).
def _many(n: int = 40) -> dict[str, object]:
    values = {f"v{i:03d}": jnp.full((3,), i, jnp.float32) for i in range(n)}
    values["odd"] = jnp.arange(5)  # a group of one: read and written one by one
    return st.mutable(values)


@pytest.mark.parametrize("fast", [True, False], ids=["buffers", "refs"])
def test_many_refs_freeze_to_snapshots_and_update_in_place(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statetree import _jax

    assert _bulk.MIN_GROUP <= 40
    if not fast:  # a JAX without the buffer attribute: the public jitted paths
        monkeypatch.setattr(_jax, "buffer", lambda ref: None)
    batches: list[int] = []
    for name in ("_copy_arrays", "_read_refs", "_write_refs"):
        jitted = getattr(_bulk, name)
        spy = lambda *args, _f=jitted: batches.append(len(args[0])) or _f(*args)
        monkeypatch.setattr(_bulk, name, spy)
    copy_to = _bulk._copy_to  # copies committed to a sharding (JAX >= 0.11.2's buffers)
    monkeypatch.setattr(
        _bulk,
        "_copy_to",
        lambda s: lambda arrays: batches.append(len(arrays)) or copy_to(s)(arrays),
    )
    tree = _many()
    frozen = st.freeze(tree)
    unboxed = st.unbox(tree)
    tree["v007"][...] = 70.0  # later writes reach neither snapshot
    tree["odd"][0] = 9
    assert frozen["v007"][...].tolist() == [7.0] * 3 and unboxed["v007"].tolist() == [7.0] * 3
    assert frozen["odd"][...].tolist() == [0, 1, 2, 3, 4]
    assert not frozen["v007"].mutable and isinstance(unboxed["odd"], jax.Array)

    new = {k: (v + 1 if k != "odd" else v * 2) for k, v in st.unbox(frozen).items()}
    st.update(tree, st.state(new))
    after = st.unbox(tree)
    for k, v in new.items():
        np.testing.assert_array_equal(after[k], v)
        assert after[k].dtype == tree[k].dtype
    # The Refs own their new buffers: changing them leaves the caller's arrays alone.
    tree["v001"][...] = -1.0
    assert new["v001"].tolist() == [2.0] * 3
    # freeze, unbox, update, unbox: the 40 float32[3] in chunks of 32 and 8 each time.
    assert batches == [32, 8] * 4


def test_many_refs_last_write_to_one_ref_wins() -> None:
    refs = [jax.new_ref(jnp.zeros(2)) for _ in range(20)]
    writes = [(r, jnp.full(2, 1.0)) for r in refs] + [(refs[3], jnp.full(2, 5.0))]
    _storage.write_all(writes)
    assert refs[3][...].tolist() == [5.0, 5.0] and refs[4][...].tolist() == [1.0, 1.0]
    # Reads of many Refs are copies: a later in-place write does not reach them.
    values = _storage.read_all(refs)
    refs[0][...] = jnp.full(2, 7.0)
    assert values[0].tolist() == [1.0, 1.0]


def test_many_refs_take_numpy_values_in_one_transfer() -> None:
    refs = [jax.new_ref(jnp.zeros(2, jnp.float32)) for _ in range(20)]
    values = [np.full(2, i, np.float32) for i in range(20)]
    _storage.write_all(list(zip(refs, values, strict=True)))
    values[3][...] = 99.0  # the Refs hold copies: the caller's NumPy arrays stay theirs
    assert [r[...].tolist() for r in refs] == [[float(i)] * 2 for i in range(20)]


def test_many_refs_cut_into_power_of_two_chunks() -> None:
    sizes = [len(c) for c in _bulk._chunks(list(range(2 * _bulk.CHUNK + 13)))]
    assert sizes == [_bulk.CHUNK, _bulk.CHUNK, 8, 4, 1]
