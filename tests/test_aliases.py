"""Aliasing: the guide's "Reference Sharing" section, in statetree terms."""

import jax
import jax.numpy as jnp
import pytest

import statetree as st


@st.register_node
class Linear:
    def __init__(self, din: int, dout: int) -> None:
        self.kernel = st.Param(jnp.ones((din, dout)))
        self.bias = st.Param(jnp.zeros(dout))


@st.register_node
class SharedVariables:
    def __init__(self) -> None:
        self.a = st.Variable(jnp.array(0))
        self.b = self.a


@st.register_node
class SharedModules:
    def __init__(self) -> None:
        self.a = Linear(1, 1)
        self.b = self.a


@jax.jit
def g(pytree: object) -> None: ...


def test_jax_refuses_one_ref_passed_twice() -> None:
    x = jax.new_ref(jnp.array(0))
    with pytest.raises(ValueError, match="only one reference to a mutable array"):
        jax.jit(lambda a, b: None)(x, x)


def test_shared_variables() -> None:
    with st.use_mutable_arrays(True):
        obj = SharedVariables()
    assert st.find_aliases(obj) == [(("a",), ("b",))]
    with pytest.raises(st.AliasError, match=r"(?s)\['a'\] <-> \['b'\].*st\.split.*st\.merge"):
        st.check_aliases(obj)
    with pytest.raises(ValueError, match="only one reference"):
        g(obj)  # what JAX says without the check


def test_shared_modules_show_as_their_variables() -> None:
    with st.use_mutable_arrays(True):
        obj = SharedModules()
    assert st.find_aliases(obj) == [
        (("a", "bias"), ("b", "bias")),
        (("a", "kernel"), ("b", "kernel")),
    ]
    with pytest.raises(st.AliasError, match="2 Variable"):
        st.check_aliases(obj)


def test_split_deduplicates_and_merge_restores_inside_jit() -> None:
    with st.use_mutable_arrays(True):
        obj = SharedVariables()

    @jax.jit
    def h(graphdef: st.GraphDef, state: st.State) -> None:
        merged = st.merge(graphdef, state)
        merged.a[...] += 10

    graphdef, state = st.split(obj)
    assert list(state) == [("a",)]
    h(graphdef, state)
    assert int(obj.a[...]) == 10 and int(obj.b[...]) == 10


def test_shared_node_is_one_object_after_merge_and_mutable() -> None:
    obj = SharedModules()
    graphdef, state = st.split(obj)
    assert len(state) == 2
    merged = st.merge(graphdef, state)
    assert merged.a is merged.b
    m = st.mutable(obj)
    assert m.a is m.b and m.a.kernel.mutable
    assert not obj.a.kernel.mutable  # input untouched


def test_no_aliases() -> None:
    assert st.find_aliases({"a": st.Variable(jnp.ones(1)), "b": jnp.ones(1)}) == []
    st.check_aliases({"a": jnp.ones(1), "b": jnp.ones(1)})  # arrays are values


def test_raw_ref_aliases() -> None:
    r = jax.new_ref(jnp.ones(1))
    assert st.find_aliases([r, {"x": r}]) == [((0,), (1, "x"))]
