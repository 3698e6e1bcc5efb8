"""``GraphDef``: the static structure of a flattened tree (see :mod:`statetree._graph`).

A GraphDef is a tuple of *parts*, one per ``jax.tree_util.tree_flatten`` (the root, and
each distinct registered node), plus the kind of each value. Paths are computed from the
parts only when asked for, then kept.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.tree_util as jtu

__all__ = ["GraphDef", "Node", "Part", "Path", "PathKey"]

Path = tuple[Any, ...]

# How many times the path walk expands one node: the paths listed for a Variable inside
# a node shared at several places (see GraphDef._walk).
_EXPANSIONS = 8


class Node(NamedTuple):
    """A registered node; ``part`` is the index of the part holding its children."""

    part: int


class Part(NamedTuple):
    """One ``tree_flatten`` worth of structure.

    ``slots`` has one entry per leaf of ``treedef`` (a ``range`` when the leaves are
    distinct values in order): an int ``i >= 0`` is value ``i`` (the same int twice
    means the same object twice); ``-1 - j`` is ``extras[j]``, a ``Static`` (a
    non-array leaf) or a :class:`Node`. ``node_aux`` is None for the root part and the
    node's aux data (which holds its class) for a node's part. ``repeats``, set for an
    all-Variable root, lists ``(position, first position)`` for each leaf that repeats
    an earlier one: ``unflatten`` then rebuilds the leaves with a few list inserts.
    """

    treedef: Any
    slots: Sequence[int]
    extras: tuple[Any, ...]
    node_aux: Any
    repeats: tuple[tuple[int, int], ...] | None = None


class PathKey:
    """A pytree key entry standing for a whole path: a State's children are keyed by
    their paths, so a State inside a tree keeps plain paths (``("w",)``, not a string)."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathKey) and other.path == self.path

    def __hash__(self) -> int:
        return hash((PathKey, self.path))

    def __str__(self) -> str:  # what jax.tree_util.keystr shows
        from .._errors import format_path

        return format_path(self.path)

    __repr__ = __str__


def _keys_of(entry: Any) -> Path:
    """The plain keys one JAX key entry stands for (one, or a State's whole path)."""
    if isinstance(entry, PathKey):
        return entry.path
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return (getattr(entry, attr),)
    return (str(entry),)


class GraphDef:
    """The static structure of a tree: where its values go, and what kind each is.

    Returned by ``st.split`` and taken by ``st.merge``. It records containers, registered
    nodes, non-array leaves, the kind of each value, and every path at which a shared
    value appears; it holds no arrays.

    Hashable, equal for equal structures, and a pytree with no leaves, so it can be a
    ``jax.jit`` static argument, a plain argument, or closed over. It records no shapes:
    states sliced by ``jax.lax.scan`` or ``jax.vmap`` still merge.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> w = st.Param(jnp.ones(2))
      >>> graphdef, state = st.split({"encoder": w, "decoder": w, "act": "gelu"})
      >>> graphdef
      GraphDef(1 values:
        ['decoder']: Param  shared with ['encoder']
      )
      >>> graphdef.occurrences()
      ((('decoder',), ('encoder',)),)
      >>> graphdef == st.split({"encoder": w, "decoder": w, "act": "gelu"})[0]
      True
    """

    __slots__ = ("_hash", "_keys", "_occurrences", "_path_index", "_paths", "kinds", "parts")

    parts: tuple[Part, ...]
    kinds: tuple[type | None, ...]

    def __init__(self, parts: tuple[Part, ...], kinds: tuple[type | None, ...]) -> None:
        self.parts = parts
        self.kinds = kinds  # per value: its Variable kind, or None for an array/Ref
        self._hash: int | None = None
        self._paths: tuple[Path, ...] | None = None
        self._occurrences: tuple[tuple[Path, ...], ...] | None = None
        self._path_index: dict[Path, int] | None = None
        self._keys: dict[int, list[Path]] = {}

    @property
    def num_values(self) -> int:
        return len(self.kinds)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((self.parts, self.kinds))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, GraphDef):
            return NotImplemented
        return (
            hash(self) == hash(other) and self.kinds == other.kinds and (self.parts == other.parts)
        )

    # ------------------------------------------------------------------ paths
    def _walk(self) -> tuple[tuple[Path, ...], tuple[tuple[Path, ...], ...]]:
        """Every path of every value: DFS, expanding each node occurrence (so a shared
        node's Variables show under each path that reaches the node), at most
        ``_EXPANSIONS`` times per node. Nodes shared at every level of a diamond reach
        their Variables through exponentially many paths; the cap keeps this linear in
        the number of parts while every shared value still shows two paths or more."""
        occurrences: list[list[Path]] = [[] for _ in self.kinds]
        expanded = [0] * len(self.parts)
        keys_of = self._part_keys

        def visit(part_index: int, prefix: Path, active: frozenset[int]) -> None:
            expanded[part_index] += 1
            part = self.parts[part_index]
            for keys, slot in zip(keys_of(part_index), part.slots, strict=True):
                path = prefix + keys
                if slot >= 0:
                    occurrences[slot].append(path)
                    continue
                extra = part.extras[-1 - slot]
                if (
                    isinstance(extra, Node)
                    and extra.part not in active
                    and expanded[extra.part] < _EXPANSIONS
                ):
                    visit(extra.part, path, active | {extra.part})

        visit(0, (), frozenset({0}))
        return tuple(p[0] for p in occurrences), tuple(map(tuple, occurrences))

    def _part_keys(self, part_index: int) -> list[Path]:
        """Each leaf's keys within part ``part_index``, computed once per part."""
        keys = self._keys.get(part_index)
        if keys is None:
            treedef = self.parts[part_index].treedef
            marker = object()
            shaped = treedef.unflatten([marker] * treedef.num_leaves)
            keyed, _ = jtu.tree_flatten_with_path(shaped, is_leaf=lambda x: x is marker)
            keys = [tuple(k for entry in kp for k in _keys_of(entry)) for kp, _ in keyed]
            self._keys[part_index] = keys
        return keys

    def paths(self) -> tuple[Path, ...]:
        """The first path of each value, in value order."""
        if self._paths is None:
            self._paths, self._occurrences = self._walk()
        return self._paths

    def occurrences(self) -> tuple[tuple[Path, ...], ...]:
        """All paths of each value, in value order (more than one for shared Variables
        and Refs)."""
        if self._occurrences is None:
            self._paths, self._occurrences = self._walk()
        return self._occurrences

    def path_index(self) -> dict[Path, int]:
        """A dict from every path at which a value occurs (a shared Variable's later
        paths too) to its value index."""
        if self._path_index is None:
            self._path_index = {p: i for i, paths in enumerate(self.occurrences()) for p in paths}
        return self._path_index

    def find(self, path: Path) -> int | None:
        """The index of the value at ``path`` (any of its paths), None if no value is
        there. Looks in :meth:`path_index` first; a path that the listing cap left out
        (a node shared at more than ``_EXPANSIONS`` places) is followed key by key
        through the parts instead, so every path of a value still finds it."""
        found = self.path_index().get(path)
        if found is not None:
            return found
        part_index, rest = 0, tuple(path)
        while True:
            part = self.parts[part_index]
            for keys, slot in zip(self._part_keys(part_index), part.slots, strict=True):
                if rest[: len(keys)] != keys:
                    continue
                if slot >= 0:
                    return slot if len(keys) == len(rest) else None
                extra = part.extras[-1 - slot]
                if not isinstance(extra, Node) or len(keys) == len(rest):
                    return None
                part_index, rest = extra.part, rest[len(keys) :]
                break
            else:
                return None

    def __repr__(self) -> str:
        from .._display import graphdef_repr

        return graphdef_repr(self)


jtu.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
GraphDef.__module__ = "statetree"
