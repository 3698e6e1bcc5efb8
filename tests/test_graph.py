"""The shared traversal: pattern reuse, nodes, cycles, paths."""

import re
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from _subprocess import ROOT, child_env

import statetree as st
from statetree._graph import _flatten as _graph


def test_same_structure_different_sharing_is_never_confused() -> None:
    # The pattern of the last split of a structure is reused only when it still holds.
    a, b, c = (st.Param(jnp.full(1, float(i))) for i in range(3))
    cases = [
        ({"x": a, "y": b, "z": c}, 3),
        ({"x": a, "y": a, "z": c}, 2),
        ({"x": a, "y": b, "z": a}, 2),
        ({"x": b, "y": b, "z": b}, 1),
        ({"x": a, "y": b, "z": c}, 3),
        ({"x": c, "y": b, "z": c}, 2),
    ]
    for tree, distinct in cases:
        graphdef, state = st.split(tree)
        assert len(state) == distinct
        rebuilt = st.merge(graphdef, state)
        for key in "xyz":
            assert rebuilt[key] is tree[key]


def test_a_pattern_reused_by_its_ids_still_sees_new_sharing() -> None:
    # Splitting one tree again matches the recorded ids; other Variables, or the same
    # ones shared differently, in the same structure must not be taken for it.
    a, b, c = (st.Param(jnp.full(1, float(i))) for i in range(3))
    for tree, distinct in [
        ({"x": a, "y": b, "z": a}, 2),
        ({"x": a, "y": b, "z": a}, 2),  # same ids: the fast check
        ({"x": c, "y": b, "z": c}, 2),  # other ids, same repeats: ids re-recorded
        ({"x": c, "y": b, "z": c}, 2),
        ({"x": c, "y": c, "z": c}, 1),  # a new repeat: not this pattern
        ({"x": c, "y": b, "z": a}, 3),
    ]:
        graphdef, state = st.split(tree)
        assert len(state) == distinct
        rebuilt = st.merge(graphdef, state)
        assert all(rebuilt[key] is tree[key] for key in "xyz")


def test_repeated_split_reuses_the_graphdef_object() -> None:
    tree = {"w": [st.Param(jnp.ones(1)) for _ in range(3)]}
    tree["tied"] = tree["w"][0]
    g1, _ = st.split(tree)
    g2, s2 = st.split(tree)
    assert g1 is g2  # same structure, same pattern: hash and paths are computed once
    assert list(s2) == [("tied",), ("w", 1), ("w", 2)]
    other_kinds = {"w": [st.BatchStat(jnp.ones(1)) for _ in range(3)]}
    other_kinds["tied"] = other_kinds["w"][0]
    g3, _ = st.split(other_kinds)
    assert g3 != g1


def test_pattern_cache_is_bounded() -> None:
    for n in range(_graph._PATTERNS_MAX + 10):
        st.split([st.Variable(jnp.zeros(())) for _ in range(n + 1)])
    assert len(_graph._PATTERNS) <= _graph._PATTERNS_MAX


@st.register_node
class Cell:
    def __init__(self, value: float) -> None:
        self.value = st.Variable(jnp.array(value))
        self.peer: object = None


def test_reference_cycle_is_refused() -> None:
    a, b = Cell(1.0), Cell(2.0)
    a.peer, b.peer = b, a
    with pytest.raises(st.StructureError, match=r"contains itself.*weakref"):
        st.split(a)


def test_node_sharing_across_containers() -> None:
    shared = Cell(3.0)
    tree = {"list": [shared, Cell(4.0)], "direct": shared}
    graphdef, state = st.split(tree)
    assert len(state) == 2
    rebuilt = st.merge(graphdef, state)
    assert rebuilt["direct"] is rebuilt["list"][0]
    assert graphdef.occurrences()[0] == (("direct", "value"), ("list", 0, "value"))


def test_paths_of_custom_pytrees_without_keys() -> None:
    class Pair:
        def __init__(self, a: object, b: object) -> None:
            self.a, self.b = a, b

    jax.tree_util.register_pytree_node(Pair, lambda p: ((p.a, p.b), None), lambda _, c: Pair(*c))
    graphdef, state = st.split({"p": Pair(st.Param(jnp.ones(1)), jnp.zeros(1))})
    assert list(state) == [("p", 0), ("p", 1)]
    assert isinstance(st.merge(graphdef, state)["p"], Pair)


def test_cycles_are_reported_again_and_again_without_harm() -> None:
    # statetree's first flatten is node-blind; a cycle is cut short there (not raised
    # from inside JAX's flatten, which would leak Python's recursion counter).
    a, b = Cell(1.0), Cell(2.0)
    a.peer, b.peer = b, a
    for _ in range(300):
        with pytest.raises(st.StructureError, match="contains itself"):
            st.split({"x": a})

    def depth(n: int) -> int:
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(500) == 500


def test_trees_without_nodes_ignore_registered_classes() -> None:
    # Cell is registered in this module; a plain tree still takes the fast path and the
    # GraphDef has a single part.
    graphdef, _ = st.split({"w": st.Param(jnp.ones(1))})
    assert len(graphdef.parts) == 1
    shared = Cell(5.0)
    graphdef, state = st.split([shared, shared])
    assert len(state) == 1 and len(graphdef.parts) == 2


def test_threads_splitting_many_structures_share_the_pattern_cache_safely() -> None:
    # More structures than the cache holds, from several threads at once: evictions
    # race with lookups and inserts. Before the cache took a lock this crashed with
    # KeyError(PyTreeDef...) or "dictionary changed size during iteration", or left the
    # cache over its bound (4 of 4 runs of the first, 30-round version against the old
    # cache; this cheaper one, 16 threads of 4 rounds, in 12 of 12 runs).
    import sys
    import threading

    v = st.Variable(jnp.zeros(()))
    trees = [{f"k{n}": v} for n in range(3 * _graph._PATTERNS_MAX)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(4):
                for tree in trees:
                    graphdef, state = st.split(tree)
                    assert graphdef.paths() == ((next(iter(tree)),),) and len(state) == 1
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert len(_graph._PATTERNS) <= _graph._PATTERNS_MAX


@st.register_node
class Diamond:
    def __init__(self, child: object) -> None:
        self.left = child
        self.right = child
        self.w = st.Param(jnp.zeros(()))


def test_diamond_sharing_stays_linear_in_distinct_objects() -> None:
    # 16 levels, each node shared by both attributes of its parent: the bottom Variable
    # is reachable through 65,536 paths. Paths listed per value are bounded, so
    # find_aliases, reprs and save stay linear in the number of distinct objects.
    bottom = st.Param(jnp.ones(()))
    tree: object = bottom
    for _ in range(16):
        tree = Diamond(tree)
    groups = st.find_aliases(tree)
    graphdef, state = st.split(tree)
    assert len(state) == 17  # 16 nodes' own Variables, and the bottom one
    listed = sum(map(len, graphdef.occurrences()))
    assert listed <= 8 * 17 * 2  # (65,536 paths for the bottom Variable alone before)
    assert len(groups) == 16 and all(2 <= len(g) <= 16 for g in groups)
    assert len(repr(graphdef)) < 20_000 and len(repr(state)) < 20_000
    rebuilt = st.merge(graphdef, state)
    node: Any = rebuilt
    for _ in range(16):
        assert node.left is node.right
        node = node.left
    assert node is bottom


def test_any_path_of_a_diamond_value_updates_it_past_the_listing_cap() -> None:
    # Paths listed per value are capped; st.update by a path the listing left out (the
    # bottom Variable reached through right-hand branches only) still finds the value.
    bottom = st.Param(jnp.ones(()), mutable=True)
    tree: object = bottom
    for _ in range(12):
        tree = Diamond(tree)
    graphdef, _ = st.split(tree)
    late = ("right",) * 12
    assert late not in graphdef.path_index()  # beyond the cap: not listed
    state = st.State({late: st.Param(jnp.full((), 7.0))})
    st.update(tree, state)
    assert float(bottom[...]) == 7.0
    missing = st.State({("right",) * 11 + ("nope",): st.Param(jnp.zeros(()))})
    with pytest.raises(st.StructureError, match=r"nope"):
        st.update(tree, missing)
    assert float(bottom[...]) == 7.0


# ------------------------------------------------- trees too deep, cycles under jit
def _headroom_intact() -> bool:
    """A plain recursion can still go almost to Python's limit from here."""
    frame, frames = sys._getframe(), 0
    while frame is not None:
        frames, frame = frames + 1, frame.f_back

    def down(k: int) -> int:
        return k if k == 0 else down(k - 1)

    try:
        down(sys.getrecursionlimit() - frames - 40)
    except RecursionError:
        return False
    return True


# Runs in a child process: a tree too deep (or cyclic) that statetree failed to refuse
# would leave the interpreter unusable or kill it, which must fail one test, not pytest.
# The depth is past JAX's flatten on each supported Python (3.11: the 1,000-frame
# recursion limit; 3.12: 1,500 C levels; 3.13: 10,000).
_DEEP_SCRIPT = """
import sys, threading
import jax, jax.numpy as jnp
import statetree as st
from statetree._graph import _depth

if sys.argv[1] == "walk-first":
    _depth._offset = None  # as on a Python whose thread state statetree cannot read
print("counter read:", _depth._offset is not None)

@st.register_node
class Cell:
    def __init__(self, value):
        self.value = st.Variable(jnp.array(value))
        self.peer = None

def refused(fn, tree):
    try:
        fn(tree)
    except st.StructureError as e:
        return str(e)
    raise AssertionError(f"{fn.__name__} accepted the tree")

DEPTH = 12_000 if sys.version_info >= (3, 13) else 2_000
deep = st.Param(jnp.zeros(()), mutable=True)
for _ in range(DEPTH):
    deep = [deep]
chain = Cell(0.0)
for i in range(DEPTH):
    link = Cell(float(i))
    link.peer = chain
    chain = link
loop = {"w": jnp.zeros(2)}
loop["self"] = [loop]
state = st.State({("w",): st.Variable(jnp.ones(2))})
entries = [st.split, st.state, st.mutable, st.freeze, st.unbox, st.find_aliases,
           st.check_aliases, lambda t: st.update(t, state), lambda t: st.merge(*st.split(t))]
for fn in entries:
    for _ in range(2):  # twice: the first refusal left nothing behind
        print("deep:", refused(fn, deep)[:80])
    print("chain:", refused(fn, chain)[:80])
    print("loop:", refused(fn, loop)[:160])

# The process is usable: deep Python recursion, a deep repr, a JAX flatten, a split in
# this thread and in another, a jitted in-place write.
def down(k):
    return k if k == 0 else down(k - 1)
down(sys.getrecursionlimit() - 100)
nested = 0
for _ in range(500):
    nested = [nested]
assert repr(nested).startswith("[[[")
assert jax.tree_util.tree_leaves(nested, is_leaf=lambda x: False) == [0]
v = st.Variable(jnp.zeros(2), mutable=True)
jax.jit(lambda v: v.__setitem__(..., v[...] + 1))(v)
assert v[...].tolist() == [1.0, 1.0]
shared = Cell(1.0)  # a node met twice by jax.jit's own flatten: no watch left on
pair = jax.jit(lambda t: t["a"].value[...] + t["b"].value[...])({"a": shared, "b": shared})
assert float(pair) == 2.0
out = []
worker = threading.Thread(target=lambda: out.append(st.split({"a": jnp.zeros(2)})))
worker.start()
worker.join()
assert len(out) == 1
print("usable")
"""


@pytest.mark.parametrize("mode", ["counter", "walk-first"])
def test_deep_and_cyclic_trees_are_refused_with_their_path_and_the_process_stays_usable(
    mode: str,
) -> None:
    # "counter": the thread's recursion counter is read before JAX's flatten and written
    # back after it fails; "walk-first": where it cannot be read, the tree is walked (and
    # refused) before JAX's flatten sees it.
    proc = subprocess.run(
        [sys.executable, "-c", _DEEP_SCRIPT, mode],
        env=child_env(1),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "usable"
    deep = [line for line in lines if line.startswith("deep:")]
    chain = [line for line in lines if line.startswith("chain:")]
    loop = [line for line in lines if line.startswith("loop:")]
    assert len(deep) == 18 and len(chain) == 9 and len(loop) == 9
    assert all(re.search(r"nested \d+ levels deep at \[0\]\[0\]", line) for line in deep)
    assert all(re.search(r"levels deep at \.peer\.peer", line) for line in chain)
    assert all(
        re.search(
            r"contains itself.*the object at the root is reached again at "
            r"\['self'\]\[0\]",
            line,
        )
        for line in loop
    )
    # On the supported CPythons the counter is readable; the fallback is the other mode.
    assert f"counter read: {mode == 'counter'}" in lines


def test_cyclic_node_under_jit_is_refused_naming_the_loop() -> None:
    a, b = Cell(1.0), Cell(2.0)
    a.peer, b.peer = b, a
    with pytest.raises(
        st.StructureError, match=r"Cell node contains itself.*\['peer'\]\['peer'\]"
    ):
        jax.jit(lambda cell: cell.value[...] * 2)(a)
    assert _headroom_intact()
    with pytest.raises(st.StructureError, match=r"contains itself"):
        jax.tree.map(lambda x: x, a)
    assert _headroom_intact()
    # A node shared twice (no cycle) still passes through jit, call after call.
    pair = {"left": b, "right": b}
    b.peer = None
    for _ in range(3):
        assert float(jax.jit(lambda t: t["left"].value[...] + t["right"].value[...])(pair)) == 4.0
