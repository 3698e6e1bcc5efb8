"""mutable / freeze / unbox over every kind of pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _corpus import Dense, assert_trees_equal

import statetree as st


def variables(tree: object) -> list[st.Variable]:
    return [
        x
        for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, st.Variable))
        if isinstance(x, st.Variable)
    ]


def test_round_trip_over_the_corpus(corpus_tree: object) -> None:
    before = jax.tree_util.tree_map(lambda x: x, corpus_tree)
    m = st.mutable(corpus_tree)
    assert all(v.mutable for v in variables(m))
    f = st.freeze(m)
    assert not any(v.mutable for v in variables(f))
    assert_trees_equal(st.unbox(f), st.unbox(corpus_tree))
    assert_trees_equal(st.unbox(m), st.unbox(corpus_tree))
    assert_trees_equal(corpus_tree, before)  # the input is not modified


def test_arrays_become_mutable_variables_and_statics_stay() -> None:
    tree = {"w": jnp.ones(2), "n": 3, "name": "dense", "fn": jax.nn.relu, "none": None}
    m = st.mutable(tree)
    assert type(m["w"]) is st.Variable and m["w"].mutable
    assert m["n"] == 3 and m["name"] == "dense" and m["fn"] is jax.nn.relu
    assert m["none"] is None


def test_kinds_and_metadata_are_kept() -> None:
    tree = {"p": st.Param(jnp.ones(2), tag="w"), "s": st.BatchStat(jnp.zeros(2))}
    m = st.mutable(tree)
    assert type(m["p"]) is st.Param and m["p"].metadata["tag"] == "w"
    assert type(st.freeze(m)["s"]) is st.BatchStat


def test_mutable_keeps_already_mutable_variables_and_raw_refs() -> None:
    v = st.Param(jnp.ones(2), mutable=True)
    ref = jax.new_ref(jnp.zeros(2))
    m = st.mutable({"v": v, "r": ref})
    assert m["v"] is v and m["r"] is ref


def test_sharing_is_preserved_for_variables_not_for_arrays() -> None:
    shared = st.Param(jnp.ones(2))
    array = jnp.zeros(2)
    m = st.mutable({"a": shared, "b": shared, "x": array, "y": array})
    assert m["a"] is m["b"]
    assert m["x"] is not m["y"]  # arrays are values: two independent Variables
    m["x"][...] = 5.0
    np.testing.assert_array_equal(m["y"][...], [0, 0])
    f = st.freeze(m)
    assert f["a"] is f["b"]


def test_shared_raw_ref_freezes_to_one_array() -> None:
    ref = jax.new_ref(jnp.arange(2.0))
    f = st.freeze([ref, ref])
    assert isinstance(f[0], jax.Array) and f[0] is f[1]


def test_mutable_storage_is_independent_of_the_input() -> None:
    frozen = st.Param(jnp.zeros(2))
    m = st.mutable(frozen)
    m[...] = 1.0
    np.testing.assert_array_equal(frozen[...], [0, 0])
    snapshot = st.freeze(m)
    m[...] = 2.0
    np.testing.assert_array_equal(snapshot[...], [1, 1])


def test_only_filter() -> None:
    tree = {"p": st.Param(jnp.ones(2)), "s": st.BatchStat(jnp.zeros(2))}
    m = st.mutable(tree, only=st.BatchStat)
    assert m["s"].mutable and not m["p"].mutable
    m = st.mutable(tree)
    f = st.freeze(m, only=st.PathContains("p"))
    assert not f["p"].mutable and f["s"].mutable


def test_changing_status_of_a_dataclass_model() -> None:
    # The guide's "Changing Status": a whole model to mutable and back.
    model = Dense(st.Param(jnp.ones((1, 3))), st.Param(jnp.zeros(3)))
    mutable_model = st.mutable(model)
    frozen_model = st.freeze(mutable_model)
    assert isinstance(mutable_model, Dense) and mutable_model.activation == "relu"
    assert mutable_model.kernel.mutable and not frozen_model.kernel.mutable
    np.testing.assert_array_equal(frozen_model.kernel[...], model.kernel[...])


def test_unbox_reads_current_values_of_refs() -> None:
    m = st.mutable({"a": jnp.zeros(2), "r": jax.new_ref(jnp.ones(1))})
    m["a"][...] = 3.0
    u = st.unbox(m)
    np.testing.assert_array_equal(u["a"], [3, 3])
    assert isinstance(u["r"], jax.Array)


def test_mutable_inside_jit_cannot_be_returned() -> None:
    # A JAX rule: Refs cannot leave a jitted function. Build frozen, convert outside.
    with pytest.raises(ValueError, match="cannot be returned"):
        jax.jit(lambda: st.mutable({"w": jnp.ones(2)}))()
    model = st.mutable(jax.jit(lambda: {"w": jnp.ones(2)})())
    assert model["w"].mutable


def test_bad_filter_is_refused_before_anything_changes() -> None:
    tree = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"Not a filter: 3"):
        st.mutable(tree, only=3)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (np.array(["a", None], dtype=object), r"dtype object \(Python objects\)"),
        (np.array(["ab", "c"]), r"dtype <U2 \(strings\)"),
        (np.zeros(2, dtype=[("x", np.float32)]), r"\(no numbers\)"),
        (np.zeros(3, dtype=jax.dtypes.float0), r"dtype float0 \(the data-free type"),
    ],
)
def test_values_no_ref_can_hold_are_refused_by_path(value: np.ndarray, said: str) -> None:
    tree = {"ok": jnp.ones(2), "deep": {"bad": value}, "var": st.Param(jnp.zeros(1))}
    before = np.asarray(tree["ok"]).copy()
    with pytest.raises(st.VariableWriteError, match=r"mutable: 1 value\(s\) cannot become") as e:
        st.mutable(tree)
    assert "['deep']['bad']: " in str(e.value) and "Convert the value" in str(e.value)
    assert e.match(said)
    with pytest.raises(st.VariableWriteError, match=r"cannot become jax\.Refs"):
        st.mutable(tree, packed=True)
    # nothing converted, and the other values untouched
    assert isinstance(tree["ok"], jax.Array) and not tree["var"].mutable
    np.testing.assert_array_equal(np.asarray(tree["ok"]), before)
    with pytest.raises(st.VariableWriteError, match=r"Param\(value\): value is a NumPy array"):
        st.Param(value)
    # only: a filter that leaves the value out leaves it alone
    assert st.mutable(tree, only=st.Param)["var"].mutable
