"""State: the values of a tree, keyed by path.

A State is what ``st.split`` and ``st.state`` return and what ``st.merge`` and
``st.update`` take. It is a pytree (its leaves are its Variables' arrays), so it passes
through ``jax.jit``, ``jax.grad``, ``jax.lax.scan`` and ``jax.vmap``; it reads like a
mapping from paths (tuples of plain keys) to values.

Paths are computed only when asked for: a State made by ``split`` refers to its GraphDef
and the value indices it holds, which is all ``merge`` needs.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import jax.tree_util as jtu

from ._errors import format_path
from ._filters import bucket
from ._graph import GraphDef, Path, PathKey

__all__ = ["State", "StateKeys"]


class StateKeys:
    """Which values a State holds: indices into a GraphDef, or explicit paths.

    This is the State's pytree aux data, so it is hashable (hash cached) and cheap to
    compare: jit compares it on every call.
    """

    __slots__ = ("_hash", "_index", "_paths", "graphdef", "indices")

    def __init__(
        self,
        graphdef: GraphDef | None,
        indices: Sequence[int] | None,
        paths: tuple[Path, ...] | None = None,
    ) -> None:
        self.graphdef = graphdef
        self.indices = indices  # a `range` when the State holds every value in order
        self._paths = paths
        self._hash: int | None = None
        self._index: dict[Path, int] | None = None

    def position(self, path: Path) -> int | None:
        """Where ``path`` sits among the State's values (None if absent)."""
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.paths())}
        return self._index.get(path)

    def positions_in(self, graphdef: GraphDef) -> Sequence[int | None]:
        """Each value's index in ``graphdef``, None for a path it lacks: the indices
        themselves when this State was made from an equal GraphDef, else looked up by
        path (any path of a shared value finds it)."""
        if self.graphdef is not None and self.graphdef == graphdef:
            return self.indices  # type: ignore[return-value]
        paths = self.paths()
        found = list(map(graphdef.path_index().get, paths))  # one dict, C-level lookups
        if None not in found:
            return found
        return [graphdef.find(p) if i is None else i for i, p in zip(found, paths, strict=True)]

    def paths(self) -> tuple[Path, ...]:
        if self._paths is None:
            assert self.graphdef is not None and self.indices is not None
            first = self.graphdef.paths()
            self._paths = tuple(map(first.__getitem__, self.indices))
        return self._paths

    def _identity(self) -> tuple[Any, ...]:
        if self.graphdef is not None:
            return (self.graphdef, self.indices)
        return (None, self._paths)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._identity())
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, StateKeys):
            return NotImplemented
        return hash(self) == hash(other) and self._identity() == other._identity()


class State:
    """Values of a tree keyed by path: ``{("layers", 0, "kernel"): Param(...), ...}``.

    Build one from a flat mapping (``State({("w",): st.Param(...)})``) or get one from
    ``st.split``/``st.state``. A State reads like a mapping from paths (tuples of plain
    keys: ``str`` for dict keys and attributes, ``int`` for sequence indices) to values.
    Views: ``flat()`` (path -> value), ``nested()`` (nested dicts); ``filter()``
    selects with the same filters as ``st.split``; ``a | b`` is the union.

    A State is a pytree whose leaves are its Variables' raw values, so it passes through
    ``jax.jit``, ``jax.grad``, ``jax.vmap`` and ``jax.lax.scan``, and ``jax.tree.map``
    over it keeps the kinds.

    Args:
      flat: a mapping from paths (tuples) to values; default empty.

    Raises:
      TypeError: a key of ``flat`` is not a tuple.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"layers": [{"kernel": st.Param(jnp.ones((2, 2)))}], "mean": jnp.zeros(2)}
      >>> graphdef, state = st.split(tree)
      >>> state
      State({
        ['layers'][0]['kernel']: Param float32[2,2] frozen
        ['mean']: Array float32[2] frozen
      })
      >>> state.paths()
      (('layers', 0, 'kernel'), ('mean',))
      >>> state[("mean",)]
      Array([0., 0.], dtype=float32)
      >>> state.filter(st.Param).nested()
      {'layers': {0: {'kernel': Param(float32[2,2], mutable=False, value=[[1., 1.],
       [1., 1.]])}}}
    """

    __slots__ = ("_keys", "_origin", "_values")

    _keys: StateKeys
    _values: list[Any]
    # The list `split` built: while a State still holds it, its kinds are known to match.
    _origin: list[Any] | None

    def __init__(self, flat: Mapping[Path, Any] | None = None) -> None:
        flat = {} if flat is None else flat
        paths = []
        for path in flat:
            if not isinstance(path, tuple):
                raise TypeError(
                    f"State(flat): keys must be paths, tuples of plain keys such as "
                    f"('layers', 0, 'kernel'); got {path!r}. Wrap a single key: ({path!r},)."
                )
            paths.append(path)
        self._keys = StateKeys(None, None, tuple(paths))
        self._values = list(flat.values())
        self._origin = None

    @classmethod
    def _make(cls, keys: StateKeys, values: list[Any], *, trusted: bool = False) -> "State":
        s = object.__new__(cls)
        s._keys = keys
        s._values = values
        s._origin = values if trusted else None
        return s

    # ------------------------------------------------------------------ mapping
    def paths(self) -> tuple[Path, ...]:
        """The paths, in tree order."""
        return self._keys.paths()

    def values(self) -> list[Any]:
        """The values, in tree order."""
        return list(self._values)

    def items(self) -> list[tuple[Path, Any]]:
        """``(path, value)`` pairs, in tree order."""
        return list(zip(self.paths(), self._values, strict=True))

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths())

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and self._keys.position(path) is not None

    def __getitem__(self, path: Path) -> Any:
        position = self._keys.position(path)
        if position is None:
            raise KeyError(
                f"No value at path {path!r} in this State. Paths are tuples of plain keys; "
                f"this State has {len(self)}, e.g. {list(self.paths()[:3])!r}."
            )
        return self._values[position]

    # ------------------------------------------------------------------ views
    def flat(self) -> dict[Path, Any]:
        """A dict from path to value (a Variable, a Ref, or an array)."""
        return dict(self.items())

    def nested(self) -> dict[Any, Any]:
        """Nested dicts keyed by each path element: ``{"layers": {0: {"kernel": ...}}}``."""
        out: dict[Any, Any] = {}
        for path, value in self.items():
            if not path:
                return {(): value}
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        return out

    @overload
    def filter(self, filter: Any, /) -> "State": ...
    @overload
    def filter(self, first: Any, second: Any, /, *filters: Any) -> "tuple[State, ...]": ...
    def filter(self, *filters: Any) -> "State | tuple[State, ...]":
        """Select values with ``st.split``'s filters; one State per filter. Values no
        filter claims are left out (unlike ``split``, which requires all claimed)."""
        buckets, _ = bucket(self.paths, self._values, filters, require_all=False)
        states = tuple(self._subset(b) for b in buckets)
        return states[0] if len(states) == 1 else states

    def _subset(self, positions: list[int]) -> "State":
        keys = self._keys
        values = [self._values[p] for p in positions]
        if keys.graphdef is not None and keys.indices is not None:
            indices = tuple(keys.indices[p] for p in positions)
            return State._make(StateKeys(keys.graphdef, indices), values)
        paths = self.paths()
        return State._make(StateKeys(None, None, tuple(paths[p] for p in positions)), values)

    def __or__(self, other: "State") -> "State":
        """The union of two States (``other`` wins where both have a path)."""
        flat = self.flat()
        flat.update(other.flat())
        return State(flat)

    def __repr__(self) -> str:
        from ._display import value_summary

        if not self._values:
            return "State({})"
        lines = [f"  {format_path(p)}: {value_summary(v)}" for p, v in self.items()]
        keys = self._keys
        if keys.graphdef is not None and keys.indices is not None:
            occurrences = keys.graphdef.occurrences()
            for line, i in enumerate(keys.indices):
                if len(occurrences[i]) > 1:
                    also = ", ".join(format_path(p) for p in occurrences[i][1:])
                    lines[line] += f"  (shared with {also})"
        return "State({\n" + "\n".join(lines) + "\n})"


def _flatten_with_keys(s: State) -> tuple[list[tuple[Any, Any]], StateKeys]:
    keys = [PathKey(p) for p in s.paths()]
    return list(zip(keys, s._values, strict=True)), s._keys


jtu.register_pytree_with_keys(
    State,
    _flatten_with_keys,
    lambda keys, values: State._make(keys, list(values)),
    lambda s: (s._values, s._keys),
)


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
State.__module__ = "statetree"
