"""How a registered user class is taken apart: which attributes are data, which static.

Which attributes are data is decided per instance: an attribute is data when it holds an
array, a Variable, a ``jax.Ref`` or a registered node, directly or inside lists, tuples,
dicts (``self.layers = [Linear(...), ...]``) or any other JAX pytree. Every other
attribute is static: it is kept in the tree structure and takes part in its equality (and
so in jit's cache key). Inside a data attribute only the data are children: the other
items (``jax.nn.relu`` in a list of layers, ``"depth": 2`` in a config dict) are static
too, each held in the structure by a childless :class:`Hole` at its position.

:mod:`._nodes` keeps the registry and tells this module which classes are nodes
(:func:`know_nodes`); nothing here depends on it.
"""

import types
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from .._variables import Variable

__all__ = ["Static", "Hole", "attrs_children", "attrs_rebuild", "know_nodes"]


class _Known:
    """The registered node classes, as a tuple for ``isinstance``: replaced whole (under
    the registry's lock) by :func:`know_nodes`, so readers need no lock."""

    types: tuple[type, ...] = ()


_KNOWN = _Known()


def know_nodes(classes: tuple[type, ...]) -> None:
    """Called by the registry whenever it grows: ``classes`` are the node classes."""
    _KNOWN.types = classes


# jax.Ref last: its isinstance check runs Python (about 0.7us); the others are C checks.
_DATA_LEAVES = (Variable, jax.Array, np.ndarray)
# Common static values, decided without asking JAX.
_PLAIN_STATICS = (str, bytes, int, float, complex, type, types.FunctionType)


def _is_data(x: Any) -> bool:
    return isinstance(x, (_DATA_LEAVES, _KNOWN.types, jax.Ref))


def _holds_data(x: Any) -> bool:
    if isinstance(x, (_DATA_LEAVES, _KNOWN.types, jax.Ref)):
        return True
    if isinstance(x, (list, tuple)):  # NamedTuples too
        return any(map(_holds_data, x))
    if isinstance(x, dict):
        return any(map(_holds_data, x.values()))
    if x is None or isinstance(x, _PLAIN_STATICS):
        return False
    # Any other JAX pytree (flax's FrozenDict, a `jax.tree_util.Partial`, a user class
    # registered with JAX): data when one of its leaves is. An object JAX does not know
    # is its own single leaf. (Lists and dicts above short-circuit: this is the jit
    # dispatch path.)
    return any(map(_is_data, jtu.tree_leaves(x, is_leaf=_is_data)))


class Static:
    """A static value kept in a structure (node attributes, non-array leaves): hashable
    even when the value is not (a list of ints, a set), compared by ``==``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Static):
            return NotImplemented
        if self.value is other.value:
            return True
        try:
            return bool(type(self.value) is type(other.value) and self.value == other.value)
        except Exception:  # e.g. arrays compared elementwise: not equal as structure
            return False

    def __hash__(self) -> int:
        try:
            return hash(self.value)
        except TypeError:
            return hash(type(self.value).__qualname__)

    def __repr__(self) -> str:
        return repr(self.value)


class Hole:
    """The place of a static item inside a data attribute (``jax.nn.relu`` in
    ``self.layers = [Linear(...), jax.nn.relu, ...]``): a pytree node with no children
    whose aux data is the item, so JAX and statetree see the container's data items only,
    at their own positions (``layers[0]``, ``layers[2]``), and the item keys jit's cache
    like any static attribute. Rebuilding the node puts the item back."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Hole({self.value!r})"


jtu.register_pytree_node(Hole, lambda h: ((), Static(h.value)), lambda s, _: Hole(s.value))


def _is_hole_or_data(x: Any) -> bool:
    return isinstance(x, (Hole, _DATA_LEAVES, _KNOWN.types, jax.Ref))


def _as_children(x: Any) -> tuple[Any, bool] | None:
    """An attribute's value as children: None for a static attribute, else ``(x with
    each static item replaced by a Hole, whether it has any)``. Runs inside JAX's
    flatten, so it never raises: a container JAX cannot rebuild with holes in it stays
    whole, as data."""
    if _is_data(x):
        return x, False  # the common case: a Variable, an array, a node
    if x is None or isinstance(x, _PLAIN_STATICS):
        return None
    if isinstance(x, (list, tuple)) and x and all(map(_is_data, x)):
        return x, False  # a list of layers
    if not _holds_data(x):
        return None
    try:
        leaves, treedef = jtu.tree_flatten(x, is_leaf=_is_data)
        if all(map(_is_data, leaves)):
            return x, False
        return treedef.unflatten([v if _is_data(v) else Hole(v) for v in leaves]), True
    except Exception:  # a pytree whose unflatten checks its children
        return x, False


def _fill(x: Any) -> Any:
    return x.value if isinstance(x, Hole) else x


def attrs_children(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """A user node's ``(data attributes, aux)``: see the module docstring."""
    attrs = vars(obj)
    data = {}
    holed = []
    for k, v in attrs.items():
        children = _as_children(v)
        if children is not None:
            data[k] = children[0]
            if children[1]:
                holed.append(k)
    static = tuple((k, Static(v)) for k, v in attrs.items() if k not in data)
    # Attribute order is part of the structure: rebuilt objects list attrs the same way.
    order = tuple(attrs)
    return data, (type(obj), order, static, tuple(holed))


def attrs_rebuild(aux: tuple[Any, ...], data: Any) -> Any:
    """Inverse of :func:`attrs_children`: a new instance, no ``__init__`` run."""
    cls, order, static, holed = aux
    obj = object.__new__(cls)
    values = {k: s.value for k, s in static}
    values.update(data)
    for k in holed:
        # An identity map that swaps holes for their items; it stops at Variables and
        # nodes (kept as they are) and keeps whatever a transform put at the data places.
        values[k] = jtu.tree_map(_fill, values[k], is_leaf=_is_hole_or_data)
    for k in order:
        # `object.__setattr__` also works for frozen dataclasses.
        object.__setattr__(obj, k, values[k])
    return obj
