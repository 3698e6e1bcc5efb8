"""st.register_node: user classes as pytree nodes with identity."""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hs
from typeguard import suppress_type_checks

import statetree as st
from statetree._graph._graphdef import _EXPANSIONS


@st.register_node
class Linear:
    def __init__(self, din: int, dout: int, activation: str = "relu") -> None:
        self.kernel = st.Param(jnp.ones((din, dout)))
        self.bias = jnp.zeros(dout)  # a bare array: data too
        self.activation = activation  # static
        self.sizes = [din, dout]  # static, and unhashable

    def __call__(self, x: Any) -> Any:
        return x @ self.kernel + self.bias


@st.register_node
@dataclasses.dataclass(frozen=True)
class Frozen:
    w: Any
    name: str = "frozen"


@st.register_node
class Stack:
    def __init__(self, n: int) -> None:
        self.layers = [Linear(2, 2) for _ in range(n)]
        self.norms = {"pre": st.BatchStat(jnp.zeros(2)), "post": (st.BatchStat(jnp.ones(2)),)}
        self.depth = n
        self.fn = jnp.tanh


def values(tree: Any) -> list[Any]:
    return [np.asarray(v) for v in jax.tree.leaves(st.unbox(tree))]


def test_data_and_static_attributes():
    graphdef, state = st.split(Stack(2))
    assert set(state.paths()) == {
        ("layers", 0, "kernel"),
        ("layers", 0, "bias"),
        ("layers", 1, "kernel"),
        ("layers", 1, "bias"),
        ("norms", "pre"),
        ("norms", "post", 0),
    }
    model = st.merge(graphdef, state)
    assert type(model) is Stack and type(model.layers[1]) is Linear
    assert model.depth == 2 and model.fn is jnp.tanh
    assert model.layers[0].activation == "relu" and model.layers[0].sizes == [2, 2]
    assert list(vars(model)) == ["layers", "norms", "depth", "fn"]  # attribute order kept


def test_static_values_take_part_in_graphdef_equality():
    g1, _ = st.split(Linear(2, 3))
    g2, _ = st.split(Linear(2, 3))
    g3, _ = st.split(Linear(2, 3, activation="tanh"))
    g4, _ = st.split(Linear(3, 2))  # `sizes` differs (and shapes, which GraphDefs ignore)
    assert g1 == g2 and hash(g1) == hash(g2)
    assert g1 != g3 and g1 != g4


def test_static_values_key_the_jit_cache():
    traces = []

    @jax.jit
    def apply(model, x):
        traces.append(model.activation)
        return model(x)

    x = jnp.ones((1, 2))
    apply(Linear(2, 3), x)
    apply(Linear(2, 3), x)
    assert traces == ["relu"]
    apply(Linear(2, 3, activation="tanh"), x)
    assert traces == ["relu", "tanh"]


def test_node_passes_through_jit_and_updates_in_place():
    model = st.mutable(Stack(2))
    assert all(st.is_mutable(v) for v in st.state(model).values())

    @jax.jit
    def step(model, x):
        y = model.layers[1](model.layers[0](x))
        model.norms["pre"][...] = y.mean(0)
        model.layers[0].kernel[...] *= 2
        return y

    y = step(model, jnp.ones((4, 2)))
    np.testing.assert_allclose(model.norms["pre"][...], y.mean(0))
    np.testing.assert_allclose(model.layers[0].kernel[...], jnp.full((2, 2), 2.0))


def test_frozen_dataclass():
    node = Frozen(st.Param(jnp.ones(3)))
    m = st.mutable(node)
    assert type(m) is Frozen and m.name == "frozen" and m.w.mutable
    assert not node.w.mutable  # the input is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.w = 1
    f = st.freeze(m)
    assert not f.w.mutable and f.name == "frozen"
    u = st.unbox(f)
    assert isinstance(u.w, jax.Array)
    out = jax.jit(lambda n: Frozen(n.w * 2, n.name))(Frozen(jnp.ones(2), "x"))
    assert out.name == "x"
    np.testing.assert_array_equal(out.w, jnp.full(2, 2.0))
    # split/merge rebuilds the node around the same Variable object. (Not `==`: a
    # dataclass's __eq__ compares (w, name) as tuples up to Python 3.12, which takes
    # `w is w` as equal, and field by field with `w == w` from 3.13, an array.)
    merged = st.merge(*st.split(m))
    assert type(merged) is Frozen and merged is not m
    assert merged.w is m.w and merged.name == m.name


def test_mutable_freeze_unbox_round_trip():
    tree = Stack(3)
    back = st.unbox(st.freeze(st.mutable(tree)))
    assert type(back) is Stack and back.depth == 3
    for a, b in zip(values(back), values(tree), strict=True):
        np.testing.assert_array_equal(a, b)


def test_any_jax_pytree_attribute_holding_arrays_is_data():
    class Pair(NamedTuple):
        a: Any
        b: Any

    @jax.tree_util.register_pytree_node_class
    class Box:
        def __init__(self, x: Any) -> None:
            self.x = x

        def tree_flatten(self) -> tuple[tuple[Any], None]:
            return (self.x,), None

        @classmethod
        def tree_unflatten(cls, aux: None, children: Any) -> "Box":
            return cls(*children)

    @st.register_node
    class Holder:
        def __init__(self) -> None:
            self.pair = Pair(jnp.ones(2), "tag")
            self.box = Box(jnp.zeros(3))
            self.empty_box = Box(None)

    _, state = st.split(Holder())
    assert set(state.paths()) == {("pair", "a"), ("box", 0)}
    model = st.mutable(Holder())
    assert isinstance(model.box.x, st.Variable) and model.pair.b == "tag"


@st.register_node
class Seq:
    def __init__(self) -> None:
        self.layers = [Linear(2, 2), jax.nn.relu, Linear(2, 2)]

    def __call__(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x


@st.register_node
class Repeat:
    def __init__(self, depth: int) -> None:
        self.cfg = {"depth": depth, "w": st.Param(jnp.full(2, 2.0)), "name": "rep"}

    def __call__(self, x: Any) -> Any:
        for _ in range(self.cfg["depth"]):  # a Python int, also under jit
            x = x * self.cfg["w"]
        return x


def test_static_items_inside_a_data_attribute_stay_static():
    seq = st.mutable(Seq())
    assert seq.layers[1] is jax.nn.relu
    keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(seq)[0]]
    assert all(k.startswith((".layers[0].", ".layers[2].")) for k in keys)  # relu: no leaf
    traces = []

    @jax.jit
    def apply(model, x):
        traces.append(model.layers[1])
        model.layers[2].kernel[...] += 1.0
        return model(x)

    x = jnp.array([1.0, -3.0])
    hidden = jax.nn.relu(x @ jnp.ones((2, 2)) + jnp.array([0.0, 3.0]))
    seq.layers[0].bias = jnp.array([0.0, 3.0])  # a bare array: one ReLU unit is active
    np.testing.assert_allclose(apply(seq, x), hidden @ jnp.full((2, 2), 2.0))
    np.testing.assert_allclose(seq.layers[2].kernel[...], jnp.full((2, 2), 2.0))
    assert traces == [jax.nn.relu]

    graphdef, state = st.split(seq)
    assert set(state.paths()) == {("layers", i, k) for i in (0, 2) for k in ("kernel", "bias")}
    merged = st.merge(graphdef, state)
    assert merged.layers[1] is jax.nn.relu and merged.layers[0].kernel is seq.layers[0].kernel


def test_static_items_in_a_dict_attribute_key_the_jit_cache():
    traces = []

    @jax.jit
    def apply(model, x):
        traces.append(model.cfg["depth"])
        return model(x)

    x = jnp.ones(2)
    np.testing.assert_allclose(apply(st.mutable(Repeat(2)), x), jnp.full(2, 4.0))
    np.testing.assert_allclose(apply(st.mutable(Repeat(2)), x), jnp.full(2, 4.0))
    np.testing.assert_allclose(apply(st.mutable(Repeat(3)), x), jnp.full(2, 8.0))
    assert traces == [2, 3]

    graphdef, state = st.split(Repeat(3))
    assert list(state.paths()) == [("cfg", "w")]
    assert graphdef != st.split(Repeat(2))[0] and graphdef == st.split(Repeat(3))[0]
    merged = st.merge(graphdef, state)
    assert merged.cfg["depth"] == 3 and merged.cfg["name"] == "rep"
    np.testing.assert_allclose(merged(x), jnp.full(2, 8.0))
    # Any transform of the leaves keeps the static items: eqx-style partitions put None.
    blank = jax.tree.map(lambda _: None, Repeat(2))
    assert blank.cfg["depth"] == 2 and blank.cfg["w"].value is None


def test_container_that_cannot_hold_holes_stays_whole():
    @jax.tree_util.register_pytree_node_class
    class Strict:
        def __init__(self, x: Any, tag: Any) -> None:
            if not isinstance(tag, str):
                raise TypeError("tag must be a string")
            self.x, self.tag = x, tag

        def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
            return (self.x, self.tag), None

        @classmethod
        def tree_unflatten(cls, aux: None, children: Any) -> "Strict":
            return cls(*children)

    @st.register_node
    class Holder:
        def __init__(self) -> None:
            self.strict = Strict(jnp.ones(2), "tag")

    model = st.merge(*st.split(st.mutable(Holder())))
    assert model.strict.tag == "tag" and isinstance(model.strict.x, st.Variable)


def test_subclasses_are_nodes_for_jit_too():
    seen = []

    @st.register_node
    class Base:
        def __init_subclass__(cls, **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)
            seen.append(cls.__name__)

        def __init__(self) -> None:
            self.w = jnp.ones(2)

    class Child(Base):
        pass

    class GrandChild(Child):
        pass

    assert seen == ["Child", "GrandChild"]  # the class's own hook still runs
    out = jax.jit(lambda m: m)(GrandChild())
    assert type(out) is GrandChild
    assert st.state(GrandChild()).paths() == (("w",),)


def test_shared_sub_object_is_one_object_after_split_merge_and_mutable():
    @st.register_node
    class Tied:
        def __init__(self) -> None:
            shared = Linear(2, 2)
            self.encoder = shared
            self.decoder = shared
            self.both = [shared]

    model = Tied()
    graphdef, state = st.split(model)
    assert len(state) == 2  # the shared Linear's two values, once
    merged = st.merge(graphdef, state)
    assert merged.encoder is merged.decoder is merged.both[0]
    m = st.mutable(model)
    assert m.encoder is m.decoder is m.both[0]
    f = st.freeze(m)
    assert f.encoder is f.decoder
    # Attributes are visited in sorted order, as JAX flattens dicts; the bias, a bare
    # array in the shared node, became one Variable too.
    assert st.find_aliases(m) == [
        (("both", 0, "bias"), ("decoder", "bias"), ("encoder", "bias")),
        (("both", 0, "kernel"), ("decoder", "kernel"), ("encoder", "kernel")),
    ]
    with pytest.raises(st.AliasError, match=r"\['decoder'\]\['kernel'\] <-> \['encoder'\]"):
        st.check_aliases(m)


def test_shared_node_merged_inside_jit_writes_through_both_paths():
    @st.register_node
    class Tied:
        def __init__(self) -> None:
            self.encoder = self.decoder = Linear(2, 2)

    model = st.mutable(Tied())
    graphdef, state = st.split(model)

    @jax.jit
    def step(state):
        m = st.merge(graphdef, state)
        m.encoder.kernel[...] += 1
        return m.decoder.kernel[...]

    np.testing.assert_array_equal(step(state), jnp.full((2, 2), 2.0))
    np.testing.assert_array_equal(model.decoder.kernel[...], jnp.full((2, 2), 2.0))


def test_rebuild_does_not_run_init():
    calls = []

    @st.register_node
    class Counted:
        def __init__(self) -> None:
            calls.append(1)
            self.w = jnp.ones(2)

    st.merge(*st.split(st.mutable(Counted())))
    jax.jit(lambda m: m)(Counted())
    assert len(calls) == 2  # the two constructions above, nothing more


def test_reference_cycles_raise():
    @st.register_node
    class Parent:
        def __init__(self) -> None:
            self.w = jnp.ones(2)
            self.children = [Child(self)]

    @st.register_node
    class Child:
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    tree = Parent()
    for op in (st.split, st.mutable, st.find_aliases):
        with pytest.raises(st.StructureError, match=r"Parent node contains itself.*weakref"):
            op(tree)


def test_register_node_errors():
    with suppress_type_checks(), pytest.raises(TypeError, match=r"cls must be a class"):
        st.register_node(Linear(1, 1))
    with pytest.raises(TypeError, match=r"Param is a Variable kind"):
        st.register_node(st.Param)

    class Slotted:
        __slots__ = ("w",)

    @dataclasses.dataclass(slots=True)
    class SlottedData:
        w: Any

    for cls in (Slotted, SlottedData):
        with pytest.raises(TypeError, match=rf"{cls.__name__} uses __slots__ without __dict__"):
            st.register_node(cls)

    class SlotsWithDict:
        __slots__ = ("__dict__", "w")

    assert st.register_node(SlotsWithDict) is SlotsWithDict
    assert st.register_node(Linear) is Linear  # registering twice is harmless


def test_one_variable_at_two_attributes():
    @st.register_node
    class Two:
        def __init__(self) -> None:
            self.a = self.b = st.Param(jnp.ones(2))

    graphdef, state = st.split(st.mutable(Two()))
    assert len(state) == 1 and graphdef == st.split(Two())[0]
    merged = st.merge(graphdef, state)
    assert merged.a is merged.b and merged.a.mutable
    assert st.find_aliases(merged) == [(("a",), ("b",))]


def test_nodes_stacked_with_vmap_and_scanned():
    @st.register_node
    class Layer:
        def __init__(self, key: Any) -> None:
            self.w = st.Param(jax.random.normal(key, (2, 2)))
            self.mean = st.BatchStat(jnp.zeros(2))

        def __call__(self, x: Any) -> Any:
            y = jax.nn.gelu(x @ self.w)
            self.mean[...] = y.mean(0)
            return y

    stack = st.mutable(jax.vmap(Layer)(jax.random.split(jax.random.key(0), 3)))
    assert stack.w.shape == (3, 2, 2)

    @jax.jit
    def run(stack, x):
        return jax.lax.scan(lambda x, layer: (layer(x), None), x, stack)[0]

    x = jnp.ones((4, 2))
    y = run(stack, x)
    expected = x
    # The scan and these eager ops are compiled apart: they agree to float rounding.
    for i in range(3):
        expected = jax.nn.gelu(expected @ stack.w[i])
        np.testing.assert_allclose(stack.mean[i], expected.mean(0), rtol=1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_node_holding_a_prng_key_variable():
    class RngKey(st.Variable):
        differentiable = False

    @st.register_node
    class Dropout:
        def __init__(self, rate: float) -> None:
            self.rate = rate
            self.key = RngKey(jax.random.key(0))

        def __call__(self, x: Any) -> Any:
            key, sub = jax.random.split(self.key[...])
            self.key[...] = key
            return jnp.where(jax.random.bernoulli(sub, 1 - self.rate, x.shape), x, 0.0)

    drop = st.mutable(Dropout(0.5))
    assert repr(drop.key) == "RngKey(key<fry>[], mutable=True)"  # keys print no value
    apply = jax.jit(lambda d, x: d(x))
    first, second = apply(drop, jnp.ones(64)), apply(drop, jnp.ones(64))
    assert not np.array_equal(first, second)  # the key advanced in place


# ---------------------------------------------------------------------------- property
@st.register_node
class Graph:
    """A node whose attributes point at arrays, Variables and earlier nodes."""


def objects(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, object) for the nodes, Variables and arrays reachable by attribute
    walks (an array in a shared node is one Variable after st.mutable)."""
    if isinstance(tree, (st.Variable, jax.Array)):
        return [(path, tree)]
    found = []
    if isinstance(tree, Graph):
        found.append((path, tree))
        items = vars(tree).items()
    elif isinstance(tree, dict):
        items = sorted(tree.items())  # JAX rebuilds dicts with sorted keys
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return found
    for key, child in items:
        found.extend(objects(child, (*path, key)))
    return found


def sharing(tree: Any) -> tuple[list[tuple[Any, ...]], set[tuple[int, int]]]:
    """The paths, and which pairs of them reach one object: identity as a structure."""
    found = objects(tree)
    pairs = {
        (i, j)
        for i, (_, a) in enumerate(found)
        for j, (_, b) in enumerate(found)
        if i < j and a is b
    }
    return [p for p, _ in found], pairs


@hs.composite
def graphs(draw: Any) -> Any:
    n_vars = draw(hs.integers(1, 4))
    variables = [st.Param(jnp.full((2,), float(i))) for i in range(n_vars)]
    nodes: list[Graph] = []
    for i in range(draw(hs.integers(1, 5))):
        node = Graph()
        node.tag = f"n{i}"  # static
        for a in range(draw(hs.integers(1, 3))):
            choice = draw(hs.integers(0, 3))
            if choice == 0 or not nodes:
                value: Any = variables[draw(hs.integers(0, n_vars - 1))]
            elif choice == 1:
                value = jnp.full((3,), float(i * 10 + a))
            elif choice == 2:
                value = nodes[draw(hs.integers(0, len(nodes) - 1))]
            else:
                value = [nodes[draw(hs.integers(0, len(nodes) - 1))], variables[0]]
            setattr(node, f"a{a}", value)
        nodes.append(node)
    return {"root": nodes[-1], "also": nodes[draw(hs.integers(0, len(nodes) - 1))]}


def diamond_past_the_listing_cap() -> dict[str, Graph]:
    """Hypothesis' shrunk failing example: a Variable in a node reached through a
    three-level diamond (8 paths from "root") and once more from "also": 9 paths, one
    over the listing cap (`_EXPANSIONS`)."""
    bottom = Graph()
    bottom.tag, bottom.a0 = "n0", st.Param(jnp.zeros(2))
    node = bottom
    for i in range(1, 4):
        parent = Graph()
        parent.tag, parent.a0, parent.a1 = f"n{i}", node, node
        node = parent
    return {"root": node, "also": bottom}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
@example(diamond_past_the_listing_cap())
def test_property_identity_survives_split_merge_mutable_freeze(tree: Any) -> None:
    want = sharing(tree)
    merged = st.merge(*st.split(tree))
    made_mutable = st.mutable(tree)
    for result in (merged, made_mutable, st.freeze(made_mutable)):
        assert sharing(result) == want
        for a, b in zip(values(result), values(tree), strict=True):
            np.testing.assert_array_equal(a, b)
    assert st.split(merged)[0] == st.split(tree)[0]
    by_variable: dict[int, list[tuple[Any, ...]]] = {}
    for path, obj in objects(made_mutable):
        if isinstance(obj, st.Variable):
            by_variable.setdefault(id(obj), []).append(path)
    shared = [frozenset(paths) for paths in by_variable.values() if len(paths) > 1]
    # One group per shared Variable. The listing expands each node at most _EXPANSIONS
    # times (linear on diamonds): a group is exact for a Variable with at most that many
    # paths, else lists that many of them or more; GraphDef.find resolves every path.
    groups = st.find_aliases(made_mutable)
    assert len(groups) == len(shared)
    for group in groups:
        (whole,) = [paths for paths in shared if set(group) <= paths]
        assert len(set(group)) == len(group) >= min(len(whole), _EXPANSIONS)
    graphdef = st.split(made_mutable)[0]
    found = [{graphdef.find(path) for path in paths} for paths in by_variable.values()]
    assert all(len(f) == 1 and None not in f for f in found)
    assert len(set.union(*found)) == len(found) == graphdef.num_values


def test_find_aliases_lists_a_capped_group_and_find_resolves_the_paths_left_out() -> None:
    tree = st.mutable(diamond_past_the_listing_cap())
    every = {path for path, obj in objects(tree) if isinstance(obj, st.Variable)}
    assert len(every) == _EXPANSIONS + 1
    (group,) = st.find_aliases(tree)
    assert len(group) == _EXPANSIONS and set(group) < every
    graphdef, state = st.split(tree)
    assert len(state) == 1
    assert {graphdef.find(path) for path in every} == {0}
