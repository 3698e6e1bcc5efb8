"""State: a pytree keyed by path, with flat and nested views and filtering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _corpus import two_layers as tree
from typeguard import suppress_type_checks

import statetree as st


def test_views() -> None:
    state = st.state(tree())
    assert state.paths()[:2] == (("layers", 0, "n"), ("layers", 0, "w"))
    flat = state.flat()
    assert list(flat) == list(state.paths())
    nested = state.nested()
    assert nested["layers"][1]["w"] is flat["layers", 1, "w"]
    assert ("step",) in state and ("nope",) not in state
    assert len(state.values()) == len(state) == 5


def test_getitem_missing_path() -> None:
    with pytest.raises(KeyError, match=r"No value at path \('nope',\)"):
        st.state(tree())["nope",]


def test_keys_must_be_paths() -> None:
    with suppress_type_checks(), pytest.raises(TypeError, match=r"keys must be paths.*\('w',\)"):
        st.State({"w": jnp.ones(1)})


def test_filter() -> None:
    state = st.state(tree())
    params = state.filter(st.Param)
    assert isinstance(params, st.State) and set(params) == {("layers", 0, "w"), ("layers", 1, "w")}
    first, rest = state.filter(st.PathContains(0), ...)
    assert len(first) == 2 and len(rest) == 3
    graphdef, _ = st.split(tree())
    assert st.merge(graphdef, first, rest)["step"] is not None


def test_union() -> None:
    state = st.state(tree())
    a, b = state.filter(st.Param, ...)
    assert (a | b).flat() == state.flat()


def test_state_is_a_pytree_that_keeps_kinds() -> None:
    state = st.freeze(st.state(tree()))
    doubled = jax.tree.map(lambda x: x * 2, state)
    assert isinstance(doubled, st.State)
    assert type(doubled["layers", 0, "w"]) is st.Param
    np.testing.assert_array_equal(doubled["layers", 0, "w"][...], np.full((2, 2), 2.0))
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 5 and all(isinstance(x, jax.Array) for x in leaves)
    keyed = jax.tree_util.tree_flatten_with_path(state)[0]
    assert jax.tree_util.keystr(keyed[0][0]) == "['layers'][0]['n'].value"


def test_a_state_inside_a_tree_keeps_plain_paths() -> None:
    params = st.state(tree(), st.Param)
    assert st.state(params).paths() == params.paths()
    assert st.state({"params": params}).paths()[0] == ("params", "layers", 0, "w")
    _, kernel, _ = st.split(params, st.PathContains(1), ...)
    assert list(kernel) == [("layers", 1, "w")]


def test_grad_through_a_frozen_state() -> None:
    graphdef, params, rest = st.split(tree(), st.Param, ...)

    def loss(params: st.State) -> jax.Array:
        model = st.merge(graphdef, params, rest)
        return sum((layer["w"] ** 2).sum() for layer in model["layers"])

    grads = jax.grad(loss)(st.freeze(params))
    assert isinstance(grads, st.State) and set(grads) == set(params)
    np.testing.assert_allclose(grads["layers", 1, "w"][...], np.full((2, 2), 2.0))
