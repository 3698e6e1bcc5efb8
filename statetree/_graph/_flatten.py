"""The one traversal behind split, merge, state, update, mutable, freeze, unbox and
find_aliases.

:func:`flatten` turns any pytree into a :class:`GraphDef` (static structure) and a list
of *values*: Variables, raw ``jax.Ref``s and bare array leaves, in depth-first order of
first appearance. A Variable or Ref met again is not a new value: the GraphDef records
the position as a second use of the first. Registered nodes (``st.register_node``) are
expanded once and referenced after, so they keep their identity too.
:func:`unflatten` is the inverse and puts the *same* object at every position that
shared one.

The work is one C++ ``jax.tree_util.tree_flatten`` per part (the root, and each distinct
registered node), stopping at Variables and nodes; the Python that follows is a pass over
the leaves. Paths are computed only when asked for. README.md beside this file has the
model (values, slots, parts, extras, repeats) and which path serves which tree.
"""

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from .._errors import StructureError
from .._variables import Variable
from .._variables import raw_of as _raw_of  # a Variable's array, Ref or View
from .._write import storage as _storage
from . import _nodes
from ._attrs import Static
from ._graphdef import GraphDef, Node, Part

__all__ = ["flatten", "unflatten"]

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_is_variable = Variable.__instancecheck__  # a C-level bound method: cheap in C loops

# A non-array leaf (an int, a string, a function) kept in the structure.


# ---------------------------------------------------------------------------- flatten
def _first_positions(leaves: list[Any]) -> list[int] | None:
    """For each leaf, the position where its object first appears; None when all the
    objects are distinct. Vectorised over object ids (C loops, no per-leaf Python)."""
    n = len(leaves)
    if n < 2:
        return None
    ids = np.fromiter(map(id, leaves), np.int64, n)
    order = np.argsort(ids, kind="stable")  # stable: each group starts at its first use
    sorted_ids = ids[order]
    starts = np.empty(n, bool)
    starts[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=starts[1:])
    if starts.all():
        return None
    first_of = np.empty(n, np.int64)
    first_of[order] = order[starts][np.cumsum(starts) - 1]
    return first_of.tolist()


def _dedup(leaves: list[Any], base: int) -> tuple[list[Any], Sequence[int], list[int] | None]:
    """``(distinct objects in order, slot of each leaf, first positions or None)``."""
    first = _first_positions(leaves)
    if first is None:
        return leaves, range(base, base + len(leaves)), None
    positions = sorted(set(first))
    rank = dict(zip(positions, range(base, base + len(positions)), strict=True))
    return [leaves[p] for p in positions], tuple(map(rank.__getitem__, first)), first


def _without(leaves: list[Any], repeats: tuple[tuple[int, int], ...]) -> list[Any]:
    """``leaves`` minus the repeated positions (C-level slices, not a Python loop)."""
    if not repeats:
        return leaves
    out: list[Any] = []
    start = 0
    for position, _ in repeats:
        out += leaves[start:position]
        start = position + 1
    out += leaves[start:]
    return out


class _Pattern(NamedTuple):
    """What an all-Variable tree looked like last time, to check and reuse."""

    leaf_types: tuple[type, ...]
    leaf_ids: np.ndarray  # the leaves' ids when recorded (ints: no objects held)
    num_values: int
    repeats: tuple[tuple[int, int], ...]
    graphdef: "GraphDef"


# treedef -> its last pattern. Splitting the same model again (every training step) then
# costs one C++ flatten and a few C-level checks, and returns the same GraphDef object,
# whose hash and paths are already computed. Holds no arrays or Variables.
# Threads read it without a lock (one dict lookup); writes (insert, evict) hold the lock.
_PATTERNS: dict[Any, _Pattern] = {}
_PATTERNS_MAX = 64
_PATTERNS_LOCK = threading.Lock()


def _identity_hashed(types: set[type]) -> bool:
    """All Variable kinds hashed by identity (so ``set(leaves)`` counts objects)."""
    return all(issubclass(t, Variable) and t.__hash__ is Variable.__hash__ for t in types)


def _reuse(
    leaves: list[Any], treedef: Any, types: tuple[type, ...]
) -> "tuple[GraphDef, list[Any]] | None":
    """The last pattern of this structure, if it still holds for ``leaves``."""
    pattern = _PATTERNS.get(treedef)
    if pattern is None or pattern.leaf_types != types:  # types: identity-hashed, as then
        return None
    # Which leaves repeat which depends only on which ids are equal: the same ids in the
    # same order (C loops, no set) repeat as when recorded, whatever objects now hold
    # them. Otherwise: the recorded repeats still hold and nothing else repeats.
    ids = np.fromiter(map(id, leaves), np.int64, len(leaves))
    if np.array_equal(ids, pattern.leaf_ids):
        return pattern.graphdef, _without(leaves, pattern.repeats)
    if len(set(ids.tolist())) == pattern.num_values and all(
        leaves[r] is leaves[f] for r, f in pattern.repeats
    ):
        with _PATTERNS_LOCK:  # these ids, for the next split of this tree
            if _PATTERNS.get(treedef) is pattern:
                _PATTERNS[treedef] = pattern._replace(leaf_ids=ids)
        return pattern.graphdef, _without(leaves, pattern.repeats)
    return None


def _record(
    leaves: list[Any], treedef: Any, types: tuple[type, ...]
) -> "tuple[GraphDef, list[Any]] | None":
    """Deduplicate an all-Variable tree and remember its pattern for next time; None
    when two of its distinct Variables hold one array or Ref (for the general path)."""
    unique, slots, first = _dedup(leaves, 0)
    if _first_positions(list(map(_raw_of, unique))) is not None:
        with _PATTERNS_LOCK:
            _PATTERNS.pop(treedef, None)  # a pattern recorded before the twins were made
        return None
    repeats = () if first is None else tuple((i, f) for i, f in enumerate(first) if f != i)
    graphdef = GraphDef((Part(treedef, slots, (), None, repeats),), tuple(map(type, unique)))
    with _PATTERNS_LOCK:
        while len(_PATTERNS) >= _PATTERNS_MAX:
            del _PATTERNS[next(iter(_PATTERNS))]  # the oldest
        _PATTERNS[treedef] = _Pattern(
            types,
            np.fromiter(map(id, leaves), np.int64, len(leaves)),
            len(unique),
            repeats,
            graphdef,
        )
    return graphdef, unique


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for metadata, False where comparing fails (arrays in metadata)."""
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


class _Flattener:
    """The general flatten: one instance per :func:`flatten` call that the fast paths do
    not serve (a tree with arrays, Refs, non-array leaves or registered nodes).

    It builds the value list and the parts of a GraphDef (see README.md). ``part`` turns
    one JAX flatten into a :class:`Part`: each leaf becomes a slot, either a value index
    (a Variable or Ref met before reuses its index, looked up by ``id``; so does a
    second Variable of the same kind and metadata around the same Ref, the pair
    ``eqx.nn.Shared`` hands out; an array always gets a new one) or an extra (a static
    leaf, or a node). A node is expanded by
    ``node``, once per object: its children become a part of their own, and every later
    position of the same object refers to that part. ``in_progress`` holds the nodes
    being expanded, so a node inside itself is refused instead of recursing forever.
    """

    __slots__ = ("ids", "in_progress", "kinds", "node_ids", "parts", "raws", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.kinds: list[type | None] = []
        self.ids: dict[int, int] = {}  # id(Variable or Ref) -> value index
        self.raws: dict[int, int] = {}  # id(a Variable's array or Ref) -> its first value
        self.node_ids: dict[int, int] = {}  # id(node) -> part index
        self.in_progress: set[int] = set()
        self.parts: list[Part | None] = []

    def part(self, tree: Any, node_aux: Any, flat: tuple[list[Any], Any] | None = None) -> int:
        """Add the part for ``tree`` (``flat``: its leaves and treedef, when known);
        return its index."""
        index = len(self.parts)
        self.parts.append(None)
        leaves, treedef = flat or _nodes.flatten_to_nodes(tree, nodes_expected=True)
        if all(map(_is_variable, leaves)):
            slots = self._variables(leaves)
            extras: tuple[Any, ...] = ()
        else:
            slots, extras = self._mixed(leaves)
        self.parts[index] = Part(treedef, slots, extras, node_aux)
        return index

    def _variables(self, leaves: list[Any]) -> Sequence[int]:
        # Every leaf a Variable (a node's part): deduplicate in C loops when no value
        # was met before, else one dict lookup per leaf.
        base = len(self.values)
        if self.ids:
            return tuple(map(self._variable, leaves))
        unique, slots, _ = _dedup(leaves, base)
        raws = list(map(_raw_of, unique))
        if _first_positions(raws) is not None:  # two Variables around one array or Ref
            return tuple(map(self._variable, leaves))
        self.values.extend(unique)
        self.kinds.extend(map(type, unique))
        new = range(base, base + len(unique))
        self.ids.update(zip(map(id, unique), new, strict=True))
        self.raws.update(zip(map(id, raws), new, strict=True))
        return slots

    def _variable(self, leaf: Any) -> int:
        """The value index of Variable ``leaf``: that of ``leaf`` itself met before, or
        of its twin (same kind and metadata, same Ref), else a new one."""
        key = id(leaf)
        slot = self.ids.get(key)
        if slot is not None:
            return slot
        raw = _raw_of(leaf)
        twin = self.raws.get(id(raw))
        if twin is not None:
            first = self.values[twin]
            if (
                type(first) is type(leaf)
                and _same(first._metadata, leaf._metadata)
                and _storage.is_storage(raw)
            ):
                self.ids[key] = twin
                return twin
        slot = self.ids[key] = len(self.values)
        self.raws.setdefault(id(raw), slot)
        self.values.append(leaf)
        self.kinds.append(type(leaf))
        return slot

    def _mixed(self, leaves: list[Any]) -> tuple[Sequence[int], tuple[Any, ...]]:
        slots: list[int] = []
        extras: list[Any] = []
        for leaf in leaves:
            if isinstance(leaf, Variable):
                slots.append(self._variable(leaf))
            elif _storage.is_storage(leaf):
                key = id(leaf)
                slot = self.ids.get(key)
                if slot is None:
                    slot = self.ids[key] = len(self.values)
                    self.values.append(leaf)
                    self.kinds.append(None)
                slots.append(slot)
            elif isinstance(leaf, _ARRAY_TYPES):
                # Arrays are values, not objects: the same array twice is two values.
                slots.append(len(self.values))
                self.values.append(leaf)
                self.kinds.append(None)
            elif _nodes.is_node(leaf):
                slots.append(-1 - len(extras))
                extras.append(Node(self.node(leaf)))
            else:
                slots.append(-1 - len(extras))
                extras.append(Static(leaf))
        return tuple(slots), tuple(extras)

    def node(self, obj: Any) -> int:
        """The index of the part holding ``obj``'s children, made on first meeting."""
        key = id(obj)
        known = self.node_ids.get(key)
        if known is not None:
            return known
        if key in self.in_progress:
            raise StructureError(
                f"A {type(obj).__name__} node contains itself (a reference cycle). "
                "statetree rebuilds nodes from their children, which a cycle makes "
                "impossible; hold the back-reference outside the tree (e.g. a weakref)."
            )
        self.in_progress.add(key)
        data, aux = _nodes.node_children(obj)
        index = self.part(data, aux)
        self.in_progress.discard(key)
        self.node_ids[key] = index
        return index


def flatten(tree: Any) -> tuple[GraphDef, list[Any]]:
    """``tree`` -> ``(graphdef, values)``; each shared Variable/Ref/node appears once."""
    leaves, treedef = _nodes.flatten_to_nodes(tree)
    types = tuple(map(type, leaves))
    reused = _reuse(leaves, treedef, types)
    if reused is not None:
        return reused  # the common case: this model was split before
    if _identity_hashed(set(types)):
        recorded = _record(leaves, treedef, types)  # only Variables
        if recorded is not None:
            return recorded
    f = _Flattener()
    f.part(tree, None, (leaves, treedef))
    return GraphDef(tuple(f.parts), tuple(f.kinds)), f.values  # type: ignore[arg-type]


def unflatten(graphdef: GraphDef, values: list[Any]) -> Any:
    """Inverse of :func:`flatten`: shared positions receive the same object."""
    parts = graphdef.parts
    built: dict[int, Any] = {}

    def build(index: int) -> Any:
        part = parts[index]
        if part.extras:
            leaves = []
            for slot in part.slots:
                if slot >= 0:
                    leaves.append(values[slot])
                    continue
                extra = part.extras[-1 - slot]
                if isinstance(extra, Static):
                    leaves.append(extra.value)
                else:
                    obj = built.get(extra.part)
                    if obj is None:
                        obj = built[extra.part] = build(extra.part)
                    leaves.append(obj)
        elif part.repeats is not None:
            # An all-Variable root: every value in order, plus the repeated positions.
            leaves = list(values) if part.repeats else values
            for position, first in part.repeats:
                leaves.insert(position, leaves[first])
        else:
            leaves = list(map(values.__getitem__, part.slots))
        tree = part.treedef.unflatten(leaves)
        return tree if part.node_aux is None else _nodes.node_rebuild(part.node_aux, tree)

    return build(0)
