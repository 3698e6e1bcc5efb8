"""split / merge / state / update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _corpus import assert_trees_equal
from _corpus import layer_model as model
from typeguard import suppress_type_checks

import statetree as st


# ------------------------------------------------------------------ split / merge
def test_split_without_filters_holds_everything() -> None:
    m = model()
    _graphdef, state = st.split(m)
    assert len(state) == 5
    assert set(state) == {
        ("linear", "kernel"),
        ("linear", "bias"),
        ("bn", "mean"),
        ("bn", "var"),
        ("count",),
    }
    assert state["bn", "mean"] is m["bn"]["mean"]


def test_merge_round_trip_copies_nothing(corpus_tree: object) -> None:
    graphdef, state = st.split(corpus_tree)
    rebuilt = st.merge(graphdef, state)
    assert_trees_equal(st.unbox(rebuilt), st.unbox(corpus_tree))
    # Same Variable objects, same storage: nothing was copied.
    for path, value in state.items():
        assert st.state(rebuilt)[path] is value


def test_split_by_kinds_first_match_wins() -> None:
    m = model()
    graphdef, params, stats, rest = st.split(m, st.Param, st.BatchStat, ...)
    assert set(params) == {("linear", "kernel"), ("linear", "bias")}
    assert set(stats) == {("bn", "mean"), ("bn", "var")}
    assert set(rest) == {("count",)}
    _, everything, nothing = st.split(m, ..., st.Param)
    assert len(everything) == 5 and len(nothing) == 0
    rebuilt = st.merge(graphdef, rest, stats, params)  # any order
    assert rebuilt["linear"]["kernel"] is m["linear"]["kernel"]
    assert rebuilt["act"] == "gelu"


def test_eager_split_merge_share_storage() -> None:
    m = model()
    graphdef, state = st.split(m)
    rebuilt = st.merge(graphdef, state)
    rebuilt["linear"]["bias"][...] = 7.0
    np.testing.assert_array_equal(m["linear"]["bias"][...], [7, 7, 7])


# ------------------------------------------------------------------ sharing
def test_shared_variables_appear_once_and_merge_as_one() -> None:
    v = st.Param(jnp.zeros(2), mutable=True)
    tree = {"a": v, "b": [v, jnp.ones(1)]}
    graphdef, state = st.split(tree)
    assert list(state) == [("a",), ("b", 1)]  # first path only
    rebuilt = st.merge(graphdef, state)
    assert rebuilt["a"] is rebuilt["b"][0] is v


def test_shared_raw_refs_appear_once() -> None:
    r = jax.new_ref(jnp.zeros(2))
    graphdef, state = st.split((r, r))
    assert len(state) == 1
    a, b = st.merge(graphdef, state)
    assert a is b is r


@jax.jit
def add_through_b(graphdef: st.GraphDef, state: st.State) -> None:
    tree = st.merge(graphdef, state)
    tree["b"][...] += 10


def test_merge_inside_jit_restores_sharing_graphdef_as_plain_argument() -> None:
    v = st.Variable(jnp.array(0), mutable=True)
    tree = {"a": v, "b": v}
    graphdef, state = st.split(tree)
    add_through_b(graphdef, state)
    assert int(tree["a"][...]) == 10 and int(tree["b"][...]) == 10


def test_merge_inside_jit_graphdef_static_or_closed_over() -> None:
    v = st.Variable(jnp.array(0), mutable=True)
    graphdef, state = st.split({"a": v, "b": v})

    @jax.jit
    def closed(state: st.State) -> None:
        st.merge(graphdef, state)["a"][...] += 1

    static = jax.jit(add_through_b.__wrapped__, static_argnums=0)
    closed(state)
    static(graphdef, state)
    assert int(v[...]) == 11


# ------------------------------------------------------------------ GraphDef
def test_graphdef_is_hashable_equal_and_leafless() -> None:
    g1, _ = st.split(model())
    g2, _ = st.split(st.freeze(model()))  # frozen or mutable: same structure
    assert g1 == g2 and hash(g1) == hash(g2)
    assert jax.tree_util.tree_leaves(g1) == []
    g3, _ = st.split({**model(), "act": "relu"})  # statics take part in equality
    assert g1 != g3
    g4, _ = st.split({**model(), "count": st.BatchStat(jnp.array(0))})  # kinds too
    assert g1 != g4


def test_graphdef_records_no_shapes() -> None:
    g1, _ = st.split({"w": st.Param(jnp.ones(2))})
    g2, _ = st.split({"w": st.Param(jnp.ones((5, 5)))})
    assert g1 == g2


def test_states_sliced_by_scan_and_vmap_still_merge() -> None:
    layers = st.mutable({"w": jnp.ones((4, 2)), "n": st.BatchStat(jnp.zeros(4))})
    graphdef, params, stats = st.split(layers, st.Variable, st.BatchStat)
    frozen = st.freeze(params)

    def body(carry: jax.Array, p: st.State) -> tuple[jax.Array, None]:
        layer = st.merge(graphdef, p, st.freeze(stats_template))
        return carry + layer["w"].sum(), None

    stats_template = jax.tree.map(lambda x: x[0], st.freeze(stats))
    total, _ = jax.lax.scan(body, jnp.zeros(()), frozen)
    assert float(total) == 8.0
    per_layer = jax.vmap(lambda p: st.merge(graphdef, p, stats_template)["w"].sum())(frozen)
    np.testing.assert_array_equal(per_layer, [2, 2, 2, 2])


# ------------------------------------------------------------------ merge errors
def test_merge_missing_and_extra_paths_are_named() -> None:
    graphdef, params, rest = st.split(model(), st.Param, ...)
    with pytest.raises(st.StructureError, match=r"missing.*\n  \['bn'\]\['mean'\]"):
        st.merge(graphdef, params)
    other = st.State({("nope",): st.Param(jnp.ones(1))})
    with pytest.raises(st.StructureError, match=r"extra.*\n  \['nope'\]"):
        st.merge(graphdef, params, rest, other)
    with pytest.raises(st.StructureError, match=r"given twice"):
        st.merge(graphdef, params, rest, params)


def test_merge_with_another_structures_graphdef() -> None:
    _, state = st.split(model())
    other_graphdef, _ = st.split({"w": st.Param(jnp.ones(1))})
    with pytest.raises(st.StructureError, match=r"another structure"):
        st.merge(other_graphdef, state)


def test_merge_checks_kinds() -> None:
    graphdef, state = st.split(model())
    as_arrays = st.State(
        {p: (v[...] if isinstance(v, st.Variable) else v) for p, v in state.items()}
    )
    with pytest.raises(st.StructureError, match=r"\['bn'\]\['mean'\]: expected BatchStat, got"):
        st.merge(graphdef, as_arrays)


def test_merge_needs_a_graphdef_and_states() -> None:
    graphdef, state = st.split(model())
    with suppress_type_checks():  # statetree's own checks, for users without typeguard
        with pytest.raises(TypeError, match="graphdef must be the GraphDef"):
            st.merge(state, graphdef)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected States after the GraphDef"):
            st.merge(graphdef, state, {"x": 1})  # type: ignore[arg-type]


def test_merge_accepts_states_rebuilt_from_paths() -> None:
    m = model()
    graphdef, state = st.split(m)
    rebuilt = st.merge(graphdef, st.State(state.flat()))
    assert rebuilt["bn"]["var"] is m["bn"]["var"]


# ------------------------------------------------------------------ state / update
def test_state_with_filters() -> None:
    m = model()
    assert len(st.state(m)) == 5
    params = st.state(m, st.Param)
    assert isinstance(params, st.State) and len(params) == 2
    params, stats = st.state(m, st.Param, st.BatchStat)  # unclaimed values left out
    assert len(stats) == 2


def test_update_writes_in_place_and_accepts_partial_states() -> None:
    m = model()
    kernel = m["linear"]["kernel"]
    new = st.State({("linear", "kernel"): jnp.full((2, 3), 5.0), ("count",): jnp.array(3)})
    st.update(m, new)
    assert m["linear"]["kernel"] is kernel
    np.testing.assert_array_equal(kernel[...], np.full((2, 3), 5.0))
    assert int(m["count"][...]) == 3


def test_update_round_trip_changes_nothing() -> None:
    m = model()
    before = st.unbox(m)
    st.update(m, st.freeze(st.state(m)))
    assert_trees_equal(st.unbox(m), before)


def test_update_inside_jit() -> None:
    m = model()
    del m["act"]  # a str leaf is not a valid jit argument (a JAX rule)

    @jax.jit
    def load(m: dict, stats: st.State) -> None:
        st.update(m, stats)

    load(m, st.State({("bn", "mean"): st.BatchStat(jnp.ones(3))}))
    np.testing.assert_array_equal(m["bn"]["mean"][...], [1, 1, 1])


def test_update_errors_name_every_path_and_write_nothing() -> None:
    m = model()
    before = st.unbox(m)
    bad = st.State(
        {
            ("linear", "bias"): jnp.ones(3),  # fine on its own
            ("linear", "kernel"): jnp.ones((3, 3)),  # shape
            ("bn", "var"): jnp.ones(3, jnp.int32),  # dtype
            ("bn", "mean"): st.Param(jnp.ones(3)),  # kind
            ("missing",): jnp.ones(1),  # extra path
        }
    )
    with pytest.raises(st.StructureError, match="4 path") as info:
        st.update(m, bad)
    message = str(info.value)
    assert "['linear']['kernel']: expected float32[2, 3], got float32[3, 3]" in message
    assert "['bn']['var']: expected float32[3], got int32[3]" in message
    assert "['bn']['mean']: kind Param does not match the tree's BatchStat" in message
    assert "['missing']: not in the tree" in message
    assert_trees_equal(st.unbox(m), before)  # nothing half-applied


def test_update_into_bare_arrays_says_make_mutable() -> None:
    tree = {"w": jnp.zeros(2), "p": st.Param(jnp.zeros(2))}
    new = st.State({("w",): jnp.ones(2), ("p",): jnp.ones(2)})
    with pytest.raises(
        st.StructureError, match=r"\['w'\]: the tree holds a bare array.*st\.mutable"
    ):
        st.update(tree, new)
    with pytest.raises(st.StructureError, match=r"\['p'\]: the tree holds a frozen Param"):
        st.update(tree, new)


def test_update_needs_states() -> None:
    with suppress_type_checks(), pytest.raises(TypeError, match="expected States"):
        st.update(model(), {"count": 1})  # type: ignore[arg-type]


# ------------------------------------------------------------------ shared Variables' later paths
def shared_tree() -> dict:
    v = st.Variable(jnp.zeros(2), mutable=True)
    return {"a": v, "b": v, "c": st.Variable(jnp.zeros(2), mutable=True)}


def test_update_accepts_any_path_of_a_shared_variable() -> None:
    tree = shared_tree()
    st.update(tree, st.State({("b",): jnp.ones(2)}))  # "b" is the Variable's second path
    np.testing.assert_array_equal(tree["a"][...], [1, 1])
    same = jnp.full(2, 2.0)
    st.update(tree, st.State({("a",): same}), st.State({("b",): same}))  # one value: fine
    np.testing.assert_array_equal(tree["a"][...], [2, 2])


def test_update_two_values_for_one_shared_variable_names_both_paths() -> None:
    tree = shared_tree()
    new = st.State({("b",): jnp.ones(2), ("c",): jnp.ones(2), ("a",): jnp.full(2, 3.0)})
    with pytest.raises(
        st.StructureError,
        match=r"nothing was written:\n  \['b'\] and \['a'\]: two paths of one shared Variable, "
        r"given two different values; give it one value",
    ):
        st.update(tree, new)
    assert float(tree["a"][0]) == 0.0 and float(tree["c"][0]) == 0.0  # nothing written


def test_merge_accepts_any_path_of_a_shared_variable() -> None:
    tree = shared_tree()
    graphdef, _ = st.split(tree)
    by_second_path = st.State({("b",): tree["a"], ("c",): tree["c"]})
    merged = st.merge(graphdef, by_second_path)
    assert merged["a"] is merged["b"] is tree["a"]
    both = st.State({("a",): tree["a"], ("b",): tree["a"], ("c",): tree["c"]})
    assert st.merge(graphdef, both)["b"] is tree["a"]
    other = st.State({("a",): tree["a"], ("b",): tree["c"], ("c",): tree["c"]})
    with pytest.raises(
        st.StructureError,
        match=r"given twice:\n  \['a'\] and \['b'\]: two paths of one shared Variable",
    ):
        st.merge(graphdef, other)


def test_long_does_not_fit_reports_are_cut_with_a_count() -> None:
    tree = {f"v{i:02d}": st.Param(jnp.zeros(())) for i in range(30)}
    graphdef, _ = st.split(tree)
    with pytest.raises(st.StructureError) as info:
        st.merge(graphdef, st.State({}))
    message = str(info.value)
    assert message.startswith("merge: the States do not fit the GraphDef.\nmissing (")
    assert "  ['v19']\n  ... and 10 more\nPass exactly the States" in message
    assert "['v20']" not in message


# ------------------------------------------------------------------ assign
def _numbers(n: int) -> dict:
    return {f"v{i}": st.Variable(jnp.full(3, float(i))) for i in range(n)}


@pytest.mark.parametrize("packed", [False, True])
def test_assign_writes_a_tree_shaped_like_unbox(packed: bool) -> None:
    tree = st.mutable({**_numbers(3), "n": st.BatchStat(jnp.array(1))}, packed=packed)

    @jax.jit
    def step(tree, x):
        new = jax.tree.map(lambda v: v * 2 + x if v.ndim else v + 1, st.unbox(tree))
        st.assign(tree, new)

    step(tree, jnp.float32(1.0))
    assert [float(tree[f"v{i}"][0]) for i in range(3)] == [1.0, 3.0, 5.0]
    assert int(tree["n"][...]) == 2
    st.assign(tree, {**st.unbox(tree), "n": 7})  # eagerly too; NumPy's rules: 7 -> int32
    assert int(tree["n"][...]) == 7 and tree["n"][...].dtype == jnp.int32


def _swaps(fn, *args) -> int:
    return sum(e.primitive.name == "swap" for e in jax.make_jaxpr(fn)(*args).eqns)


def test_assign_on_a_packed_tree_writes_each_buffer_once() -> None:
    tree = st.mutable(_numbers(6), packed=True)

    def ema_loop(tree):
        for v in tree.values():
            v[...] = 0.9 * v[...] + 0.1

    def ema_assign(tree):
        st.assign(tree, jax.tree.map(lambda v: 0.9 * v + 0.1, st.unbox(tree)))

    assert _swaps(ema_loop, tree) == 6
    assert _swaps(ema_assign, tree) == 1
    plain = st.mutable(_numbers(6))
    jax.jit(ema_assign)(tree)
    jax.jit(ema_loop)(plain)
    assert_trees_equal(st.unbox(st.freeze(tree)), st.unbox(st.freeze(plain)))


def test_assign_to_a_shared_variable_keeps_the_last_path() -> None:
    v = st.Variable(jnp.zeros(2), mutable=True)
    tree = {"a": v, "b": v}
    st.assign(tree, {"a": jnp.ones(2), "b": jnp.full(2, 5.0)})
    assert v[...].tolist() == [5.0, 5.0]


def test_assign_refuses_a_tree_of_another_shape_and_writes_nothing() -> None:
    tree = st.mutable(_numbers(2))
    with pytest.raises(st.StructureError, match=r"(?s)missing.*\[.v1.\].*extra.*\[.w.\]"):
        st.assign(tree, {"v0": jnp.ones(3), "w": jnp.ones(3)})
    with pytest.raises(st.VariableWriteError, match="float32"):
        st.assign(tree, {"v0": jnp.ones(3), "v1": jnp.ones(4)})
    assert [float(tree[k][0]) for k in ("v0", "v1")] == [0.0, 1.0]


def test_assign_into_a_frozen_variable_names_the_path() -> None:
    tree = {"w": st.Variable(jnp.zeros(2), mutable=False)}
    with pytest.raises(st.FrozenVariableError, match="w"):
        st.assign(tree, {"w": jnp.ones(2)})


def test_merge_of_a_filtered_split_looks_at_no_path(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model()
    graphdef, params, rest = st.split(m, st.Param, ...)

    def no_paths(self: st.GraphDef) -> None:
        raise AssertionError("merge computed the paths")

    with monkeypatch.context() as patch:
        patch.setattr(st.GraphDef, "paths", no_paths)
        merged = st.merge(graphdef, rest, params)  # any order
    assert merged["bn"]["mean"] is m["bn"]["mean"] and merged["act"] == "gelu"
    with pytest.raises(st.StructureError, match=r"(?s)missing.*\['bn'\].*given twice"):
        st.merge(graphdef, params, params, st.State({}))
