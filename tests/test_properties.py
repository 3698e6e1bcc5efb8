"""Property-based round trips on random pytrees with random sharing and random filters."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _corpus import assert_trees_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import statetree as st

KINDS = [st.Variable, st.Param, st.BatchStat, st.Cache, st.OptState]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@hs.composite
def leaves(draw: hs.DrawFn, pool: list[Any]) -> Any:
    """A leaf: a fresh array, a static, or a Variable/Ref drawn from a shared pool."""
    choice = draw(hs.sampled_from(["array", "static", "shared", "shared", "none"]))
    if choice == "array":
        shape = draw(hs.sampled_from([(), (2,), (1, 3)]))
        dtype = draw(hs.sampled_from([jnp.float32, jnp.int32, jnp.bfloat16]))
        return jnp.full(shape, draw(hs.integers(-3, 3)), dtype)
    if choice == "static":
        return draw(hs.sampled_from([1, "relu", 2.5, True]))
    if choice == "none":
        return None
    return draw(hs.sampled_from(pool))


@hs.composite
def trees(draw: hs.DrawFn) -> Any:
    """A random nest of dicts/lists/tuples whose Variables and Refs may be shared."""
    pool: list[Any] = []
    for i in range(draw(hs.integers(1, 4))):
        kind = draw(hs.sampled_from(KINDS))
        mutable = draw(hs.booleans())
        pool.append(kind(jnp.full((2,), float(i)), mutable=mutable))
    if draw(hs.booleans()):
        pool.append(jax.new_ref(jnp.arange(3.0)))
    return draw(
        hs.recursive(
            leaves(pool),
            lambda children: hs.one_of(
                hs.dictionaries(hs.sampled_from("abcd"), children, max_size=3),
                hs.lists(children, max_size=3),
                hs.lists(children, max_size=2).map(tuple),
            ),
            max_leaves=8,
        )
    )


FILTERS = [
    st.Param,
    st.BatchStat,
    st.Variable,
    st.PathContains("a"),
    st.PathContains(0),
    st.Not(st.Param),
    st.Any(st.Cache, st.PathContains("b")),
    st.All(st.Variable, st.PathContains("c")),
    lambda path, value: len(path) > 1,
]


def identity_classes(values: list[Any]) -> list[list[int]]:
    """Positions grouped by object identity: the shape of the sharing."""
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(id(v), []).append(i)
    return sorted(groups.values())


def graph_values(tree: Any) -> list[Any]:
    """Every Variable/Ref at every position (not deduplicated)."""
    flat = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, st.Variable))
    return [x for x in flat if isinstance(x, st.Variable) or st.is_mutable(x)]


@SETTINGS
@given(trees())
def test_split_merge_round_trip_keeps_identity(tree: Any) -> None:
    graphdef, state = st.split(tree)
    rebuilt = st.merge(graphdef, state)
    assert_trees_equal(st.unbox(rebuilt), st.unbox(tree))
    before, after = graph_values(tree), graph_values(rebuilt)
    assert len(before) == len(after)
    assert all(a is b for a, b in zip(before, after, strict=True))  # nothing copied
    # Each shared object is stored once.
    assert len(state) == len({id(v) for v in state.values()})


@SETTINGS
@given(trees(), hs.lists(hs.sampled_from(FILTERS), max_size=3))
def test_split_buckets_first_match(tree: Any, filters: list[Any]) -> None:
    graphdef, *states = st.split(tree, *filters, ...)
    everything = st.state(tree)
    assert sum(map(len, states)) == len(everything)
    for bucket, state in enumerate(states):
        for path, value in state.items():
            first = next(
                (i for i, f in enumerate(filters) if _matches(f, path, value)), len(filters)
            )
            assert first == bucket, (path, value, filters)
    rebuilt = st.merge(graphdef, *reversed(states))
    assert_trees_equal(st.unbox(rebuilt), st.unbox(tree))


def _matches(f: Any, path: tuple[Any, ...], value: Any) -> bool:
    return isinstance(value, f) if isinstance(f, type) else bool(f(path, value))


def positions(tree: Any) -> list[Any]:
    """Every leaf position, Variables kept whole (arrays, Refs, Variables, statics)."""
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, st.Variable))


@SETTINGS
@given(trees())
def test_mutable_freeze_unbox_round_trip_keeps_sharing(tree: Any) -> None:
    m = st.mutable(tree)
    assert all(st.is_mutable(v) for v in graph_values(m))
    f = st.freeze(m)
    assert_trees_equal(st.unbox(f), st.unbox(tree))
    before, after, frozen = positions(tree), positions(m), positions(f)
    assert len(before) == len(after) == len(frozen)
    has_identity = [i for i, x in enumerate(before) if graph_values(x)]
    arrays = [i for i, x in enumerate(before) if isinstance(x, jax.Array)]
    # Things with identity keep their sharing pattern through mutable and freeze ...
    for converted in (after, frozen):
        assert identity_classes([converted[i] for i in has_identity]) == identity_classes(
            [before[i] for i in has_identity]
        )
    # ... and arrays are values: each becomes its own Variable.
    assert len({id(after[i]) for i in arrays}) == len(arrays)
    assert all(isinstance(after[i], st.Variable) for i in arrays)


@SETTINGS
@given(trees())
def test_update_with_own_state_changes_nothing(tree: Any) -> None:
    m = st.mutable(tree)
    before = st.unbox(m)
    st.update(m, st.freeze(st.state(m)))
    assert_trees_equal(st.unbox(m), before)


@SETTINGS
@given(trees(), hs.integers(-5, 5))
def test_update_writes_through_every_shared_path(tree: Any, fill: int) -> None:
    m = st.mutable(tree)
    state = st.state(m)
    new = jax.tree.map(lambda x: jnp.full(x.shape, fill, x.dtype), st.freeze(state))
    st.update(m, new)
    for value in graph_values(m):
        np.testing.assert_array_equal(np.asarray(value[...], np.float32), float(fill))


@SETTINGS
@given(
    hs.lists(hs.sampled_from([(), (2,), (3, 1)]), min_size=1, max_size=6),
    hs.lists(hs.integers(0, 5), max_size=8),
    hs.booleans(),
)
def test_update_of_a_packed_tree_equals_the_plain_tree(
    shapes: list[tuple[int, ...]], written: list[int], int_dtype: bool
) -> None:
    """Whatever subset of a packed buffer a State writes (all of it, most of it, a
    little, one slot twice), the result is the plain tree's."""
    dtypes = [jnp.int32 if int_dtype and i % 2 else jnp.float32 for i in range(len(shapes))]
    tree = {
        f"v{i}": jnp.full(s, i, d) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))
    }
    packed, plain = st.mutable(tree, packed=True), st.mutable(tree)
    states = [
        st.State({(f"v{i}",): jnp.full(shapes[i], 10 + k, dtypes[i])})
        for k, i in enumerate(written)
        if i < len(shapes)
    ]
    st.update(packed, *states)
    st.update(plain, *states)
    assert_trees_equal(st.unbox(st.freeze(packed)), st.unbox(st.freeze(plain)))


# ---------------------------------------------------------- registered nodes, filters
@st.register_node
class Box:
    """A user class: some attributes data, some static, a list mixing both."""


@hs.composite
def node_trees(draw: hs.DrawFn) -> Any:
    """Random trees holding registered nodes, some reached through several paths."""
    pool: list[Any] = []
    for i in range(draw(hs.integers(1, 3))):
        kind = draw(hs.sampled_from(KINDS))
        pool.append(kind(jnp.full((2,), float(i)), mutable=draw(hs.booleans())))

    def subtrees(shared: list[Any]) -> Any:
        return hs.recursive(
            leaves(shared),
            lambda children: hs.one_of(
                hs.dictionaries(hs.sampled_from("abc"), children, max_size=2),
                hs.lists(children, max_size=2),
            ),
            max_leaves=4,
        )

    nodes: list[Any] = []
    for i in range(draw(hs.integers(1, 3))):
        node = Box()
        node.tag = f"n{i}"  # static
        node.body = draw(subtrees(pool + nodes))  # may hold earlier nodes: shared
        node.mixed = [draw(leaves(pool + nodes)), jax.nn.relu, i]  # data beside statics
        nodes.append(node)
    return draw(subtrees(pool + nodes))


ANY_TREES = hs.one_of(trees(), node_trees())


def walk(tree: Any) -> list[Any]:
    """Every leaf position, entering nodes (a shared node is entered at each position)."""
    out = []
    for leaf in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda x: isinstance(x, (st.Variable, Box))
    ):
        out.append(leaf)
        if isinstance(leaf, Box):
            out += walk(vars(leaf))
    return out


def has_identity(x: Any) -> bool:
    return isinstance(x, (st.Variable, Box)) or st.is_mutable(x)


@SETTINGS
@given(node_trees())
def test_nodes_keep_identity_through_split_merge_mutable_freeze(tree: Any) -> None:
    before = walk(tree)
    known = [i for i, x in enumerate(before) if has_identity(x)]
    merged = st.merge(*st.split(tree))
    made_mutable = st.mutable(tree)
    for result in (merged, made_mutable, st.freeze(made_mutable)):
        after = walk(result)
        assert len(after) == len(before)
        assert identity_classes([after[i] for i in known]) == identity_classes(
            [before[i] for i in known]
        )
        assert_trees_equal(st.unbox(st.freeze(result)), st.unbox(tree))
    assert all(
        merged_x is x for merged_x, x in zip(graph_values(merged), graph_values(tree), strict=True)
    )


@SETTINGS
@given(ANY_TREES, hs.sampled_from(FILTERS))
def test_mutable_and_freeze_convert_exactly_what_the_filter_matches(tree: Any, f: Any) -> None:
    items = list(st.state(tree).items())  # each value once, under its first path
    made = list(st.state(st.mutable(tree, only=f)).items())
    assert [p for p, _ in made] == [p for p, _ in items]
    for (path, old), (_, new) in zip(items, made, strict=True):
        if not _matches(f, path, old):
            assert new is old
        elif isinstance(old, st.Variable):  # same kind; kept when already mutable
            assert new.mutable and type(new) is type(old) and (new is old) == old.mutable
        elif st.is_mutable(old):  # a raw Ref is kept
            assert new is old
        else:  # a bare array becomes a mutable Variable
            assert type(new) is st.Variable and new.mutable
    # Freezing a raw Ref gives an array, and arrays are values (a shared Ref becomes
    # two arrays): compare position by position, deciding once per object.
    mutable_tree = st.mutable(tree)
    matched = {id(v): _matches(f, p, v) for p, v in st.state(mutable_tree).items()}
    before, after = walk(mutable_tree), walk(st.freeze(mutable_tree, only=f))
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if not (isinstance(old, st.Variable) or st.is_mutable(old)):
            continue
        if not matched[id(old)]:
            assert new is old
            continue
        # A Variable: a frozen one of its kind; a raw Ref: its array.
        assert not st.is_mutable(new)
        assert (
            type(new) is type(old) if isinstance(old, st.Variable) else isinstance(new, jax.Array)
        )
        np.testing.assert_array_equal(np.asarray(new[...]), np.asarray(old[...]))


@SETTINGS
@given(ANY_TREES, hs.sampled_from(FILTERS), hs.integers(0, 2**16), hs.integers(-5, 5))
def test_state_with_a_filter_then_update_writes_exactly_those(
    tree: Any, f: Any, which_path: int, fill: int
) -> None:
    m = st.mutable({"x": tree, "y": tree})  # each Variable, Ref and node at two paths
    graphdef, everything = st.split(m)
    before = [np.asarray(v[...]) for v in everything.values()]
    chosen = st.state(m, f)
    assert all(_matches(f, p, v) for p, v in chosen.items())
    # Give each value under any of its paths (a shared Variable has several).
    occurrences = dict(zip(graphdef.paths(), graphdef.occurrences(), strict=True))
    new = st.State(
        {
            occurrences[p][which_path % len(occurrences[p])]: jnp.full(v.shape, fill, v.dtype)
            for p, v in chosen.items()
        }
    )
    st.update(m, new)
    written = set(chosen.paths())
    for (path, value), old in zip(st.state(m).items(), before, strict=True):
        want = np.full(old.shape, fill, old.dtype) if path in written else old
        np.testing.assert_array_equal(np.asarray(value[...]), want)
