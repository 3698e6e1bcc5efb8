"""Filters (statetree._filters): kinds, paths, predicates and their combinators, as
st.split uses them."""

import jax
import jax.numpy as jnp
import pytest
from _corpus import layer_model as model

import statetree as st


def test_path_filters_and_combinators() -> None:
    m = model()
    _, bn, _other = st.split(m, st.PathContains("bn"), ...)
    assert set(bn) == {("bn", "mean"), ("bn", "var")}
    _, kernel, _ = st.split(m, st.All(st.Param, st.PathContains("kernel")), ...)
    assert set(kernel) == {("linear", "kernel")}
    _, not_param, _ = st.split(m, st.Not(st.Param), ...)
    assert len(not_param) == 3
    _, either, _ = st.split(m, st.Any(st.PathContains("bias"), st.BatchStat), ...)
    assert len(either) == 3
    _, pred, _ = st.split(m, lambda path, v: path[-1] == "var", ...)
    assert set(pred) == {("bn", "var")}
    _, idx, _ = st.split({"layers": [jnp.ones(1), jnp.ones(2)]}, st.PathContains(1), ...)
    assert set(idx) == {("layers", 1)}


def test_filter_reprs() -> None:
    f = st.Any(st.Param, st.Not(st.PathContains("bn")), ...)
    assert repr(f) == "Any(Param, Not(PathContains('bn')), ...)"
    assert st.PathContains("a") == st.PathContains("a")
    assert hash(st.All(st.Param)) == hash(st.All(st.Param))


def test_kind_filters_match_variables_only() -> None:
    tree = {"v": st.Variable(jnp.ones(1)), "a": jnp.ones(1), "r": jax.new_ref(jnp.ones(1))}
    _, variables, rest = st.split(tree, st.Variable, ...)
    assert set(variables) == {("v",)} and set(rest) == {("a",), ("r",)}


def test_unclaimed_value_names_its_path() -> None:
    with pytest.raises(st.StructureError, match=r"Unclaimed:\n  \['bn'\]\['mean'\]"):
        st.split(model(), st.Param, PathsOnly("count"))


def PathsOnly(key: str) -> st.PathContains:
    return st.PathContains(key)


def test_not_a_filter() -> None:
    with pytest.raises(TypeError, match=r"Not a filter: 'bn'.*PathContains"):
        st.split(model(), "bn")
    with pytest.raises(TypeError, match="Not a filter"):
        st.Not(3)
