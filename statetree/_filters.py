"""Filters: which values of a tree go into which State.

A filter is one of:

- a class: matches instances (``st.Param`` matches Params; ``st.Variable`` every Variable);
- ``...`` (Ellipsis): matches everything;
- ``st.PathContains(key)``: matches when ``key`` equals one element of the path;
- a callable ``(path, value) -> bool``;
- ``st.Any(*filters)``, ``st.All(*filters)``, ``st.Not(filter)``.

A path is a tuple of plain keys: ``str`` for dict keys and attributes, ``int`` for
sequence indices, e.g. ``("layers", 0, "kernel")``.
"""

import typing as t
from collections.abc import Callable, Sequence

from ._errors import StructureError, format_paths

__all__ = [
    "PathContains",
    "Any",
    "All",
    "Not",
    "to_predicate",
    "needs_path",
    "filter_repr",
    "bucket",
]

Predicate = Callable[[tuple[t.Any, ...], t.Any], bool]


class _Combinator:
    __slots__ = ("_predicates", "filters")

    filters: tuple[t.Any, ...]

    def __init__(self, *filters: object) -> None:
        # Checked and turned into predicates once: a bad filter fails here, naming itself.
        self._predicates = tuple(map(to_predicate, filters))
        self.filters = filters

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.filters == other.filters  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.filters))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(filter_repr, self.filters))})"


class PathContains:
    """A filter matching values whose path has ``key`` as one of its elements.

    Args:
      key: a path element: a ``str`` (dict key or attribute name) or an ``int``
        (sequence index). It must equal a whole element; substrings do not match.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> st.PathContains("bn")(("block", "bn", "mean"), None)
      True
      >>> tree = {"bn": {"mean": jnp.zeros(2)}, "linear": {"kernel": jnp.ones(2)}}
      >>> _, bn, rest = st.split(tree, st.PathContains("bn"), ...)
      >>> bn.paths(), rest.paths()
      ((('bn', 'mean'),), (('linear', 'kernel'),))
    """

    __slots__ = ("key",)

    def __init__(self, key: object) -> None:
        self.key = key

    def __call__(self, path: tuple[object, ...], value: object) -> bool:
        return self.key in path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathContains) and other.key == self.key

    def __hash__(self) -> int:
        return hash((PathContains, self.key))

    def __repr__(self) -> str:
        return f"PathContains({self.key!r})"


class Any(_Combinator):
    """A filter matching when any of ``filters`` matches.

    Args:
      *filters: filters (classes, ``...``, ``st.PathContains``, predicates, combinators).

    Raises:
      TypeError: one of ``filters`` is not a filter.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(2)),
      ...         "c": st.Cache(jnp.zeros(2))}
      >>> st.state(tree, st.Any(st.BatchStat, st.Cache)).paths()
      (('c',), ('n',))
    """

    __slots__ = ()

    def __call__(self, path: tuple[object, ...], value: object) -> bool:
        return any(p(path, value) for p in self._predicates)


class All(_Combinator):
    """A filter matching when every one of ``filters`` matches.

    Args:
      *filters: filters (classes, ``...``, ``st.PathContains``, predicates, combinators).

    Raises:
      TypeError: one of ``filters`` is not a filter.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"enc": {"w": st.Param(jnp.ones(2))}, "dec": {"w": st.Param(jnp.ones(2))}}
      >>> st.state(tree, st.All(st.Param, st.PathContains("enc"))).paths()
      (('enc', 'w'),)
    """

    __slots__ = ()

    def __call__(self, path: tuple[object, ...], value: object) -> bool:
        return all(p(path, value) for p in self._predicates)


class Not(_Combinator):
    """A filter matching when ``filter`` does not.

    Args:
      filter: a filter (a class, ``...``, ``st.PathContains``, a predicate, a combinator).

    Raises:
      TypeError: ``filter`` is not a filter.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(2))}
      >>> st.state(tree, st.Not(st.Param)).paths()
      (('n',),)
    """

    __slots__ = ()

    def __init__(self, filter: object) -> None:
        super().__init__(filter)

    def __call__(self, path: tuple[object, ...], value: object) -> bool:
        return not self._predicates[0](path, value)


def _everything(path: tuple[object, ...], value: object) -> bool:
    return True


def to_predicate(f: object) -> Predicate:
    """The ``(path, value) -> bool`` function a filter stands for."""
    if f is Ellipsis:
        return _everything
    if isinstance(f, type):
        return lambda path, value: isinstance(value, f)
    if callable(f):
        return f  # type: ignore[return-value]
    raise TypeError(
        f"Not a filter: {f!r} (of type {type(f).__name__}). A filter is a class such as "
        "st.Param, ... (everything), st.PathContains(key), a function (path, value) -> "
        "bool, or st.Any/All/Not of those."
    )


def needs_path(f: object) -> bool:
    """False when the filter can be decided from the value alone (kinds and ``...``)."""
    if f is Ellipsis or isinstance(f, type):
        return False
    if isinstance(f, _Combinator):
        return any(needs_path(g) for g in f.filters)
    return True


def filter_repr(f: object) -> str:
    if f is Ellipsis:
        return "..."
    if isinstance(f, type):
        return f.__name__
    return getattr(f, "__name__", None) or repr(f)


def bucket(
    paths: Callable[[], Sequence[tuple[t.Any, ...]]],
    values: Sequence[t.Any],
    filters: Sequence[t.Any],
    *,
    require_all: bool,
) -> tuple[list[list[int]], list[int]]:
    """Positions of ``values`` claimed by each filter (first match wins), and the rest.

    ``paths`` is called only if some filter looks at paths.
    """
    predicates = [to_predicate(f) for f in filters]
    buckets: list[list[int]] = [[] for _ in filters]
    unclaimed: list[int] = []
    if not any(map(needs_path, filters)):
        # Kinds and `...` only: decide once per type, not once per value.
        decided: dict[type, int] = {}
        for i, value in enumerate(values):
            kind = type(value)
            b = decided.get(kind)
            if b is None:
                b = decided[kind] = next((j for j, p in enumerate(predicates) if p((), value)), -1)
            (buckets[b] if b >= 0 else unclaimed).append(i)
    else:
        all_paths = paths()
        for i, value in enumerate(values):
            path = all_paths[i]
            for j, p in enumerate(predicates):
                if p(path, value):
                    buckets[j].append(i)
                    break
            else:
                unclaimed.append(i)
    if require_all and unclaimed:
        shown = paths()
        raise StructureError(
            f"No filter claims {len(unclaimed)} value(s); every Variable must go into some "
            f"State. Filters were ({', '.join(map(filter_repr, filters))}). Unclaimed:\n"
            + format_paths([shown[i] for i in unclaimed])
            + "\nAdd a catch-all filter last: st.split(tree, ..., ...)."
        )
    return buckets, unclaimed


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
PathContains.__module__ = Any.__module__ = All.__module__ = Not.__module__ = "statetree"
