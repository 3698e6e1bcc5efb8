"""Aliasing: the guide's "Reference Sharing" section, in statetree terms."""

import jax
import jax.numpy as jnp
import numpy as np
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


# ------------------------------------------------- distinct Variables around one Ref
def _twins() -> tuple[st.Param, st.Param]:
    v = st.Param(jnp.zeros(2), mutable=True)
    twin = jax.tree.map(lambda x: x, v)  # a new Param around the same Ref
    assert twin is not v and twin._raw is v._raw
    return v, twin


def test_find_aliases_reports_distinct_variables_sharing_one_ref() -> None:
    v, twin = _twins()
    other = st.Param(jnp.zeros(2), mutable=True)
    assert st.find_aliases({"a": v, "b": twin, "c": other}) == [(("a",), ("b",))]
    # A Variable and its own raw Ref; and two kinds around one Ref.
    assert st.find_aliases({"a": v, "r": v._raw}) == [(("a",), ("r",))]
    stat = jax.tree.map(lambda x: x, st.BatchStat(jnp.zeros(2), mutable=True))
    cross = st.Param._from_raw(stat._raw, ())
    assert st.find_aliases([stat, cross]) == [((0,), (1,))]
    with pytest.raises(st.AliasError, match=r"\['a'\] <-> \['b'\]"):
        st.check_aliases({"a": v, "b": twin})


def test_split_stores_one_ref_once_and_merge_keeps_the_storage_shared() -> None:
    v, twin = _twins()
    tree = {"a": v, "b": twin, "c": st.Param(jnp.ones(1), mutable=True)}
    for _ in range(2):  # the second split goes the same way (no stale pattern)
        graphdef, state = st.split(tree)
        assert state.paths() == (("a",), ("c",))
        assert graphdef.occurrences()[0] == (("a",), ("b",))

    @jax.jit
    def bump(graphdef: st.GraphDef, state: st.State) -> None:
        model = st.merge(graphdef, state)  # jit would refuse the Ref passed twice
        model["b"][...] += 1.0
        model["a"][...] += 1.0

    bump(graphdef, state)
    assert v[...].tolist() == twin[...].tolist() == [2.0, 2.0]


def test_equinox_shared_pair_is_one_alias_group_and_one_stored_copy() -> None:
    eqx = pytest.importorskip("equinox")
    from statetree.adapters.equinox import mutable

    k1, k2 = jax.random.split(jax.random.key(0))
    embedding = eqx.nn.Embedding(5, 3, key=k1)
    unembedding = eqx.nn.Linear(3, 5, use_bias=False, key=k2)
    tied = eqx.nn.Shared((embedding, unembedding), lambda p: p[1].weight, lambda p: p[0].weight)
    emb, lin = mutable(tied)()  # the pair Shared.__call__ hands out
    assert st.find_aliases((emb, lin)) == [((0, "weight"), (1, "weight"))]
    with pytest.raises(st.AliasError):
        st.check_aliases((emb, lin))
    graphdef, state = st.split((emb, lin))
    assert len(state) == 1

    @jax.jit
    def step(graphdef: st.GraphDef, state: st.State) -> None:
        _, lin = st.merge(graphdef, state)
        lin.weight[...] += 1.0

    before = emb.weight[0, 0]
    step(graphdef, state)
    # The step adds in float32, so the expected value is that same float32 sum (bit for
    # bit), not `float(before) + 1.0` in float64: the float32 sum keeps 24 significant
    # bits and drops the weight's lowest ones whenever the sum is in a higher binade
    # (for a weight in [1, 2), its last bit). Which weights the random init gives
    # changes with the JAX version; the float32 sum is right for all of them.
    expected = np.float32(before) + np.float32(1.0)
    assert float(emb.weight[0, 0]) == float(lin.weight[0, 0]) == float(expected)
