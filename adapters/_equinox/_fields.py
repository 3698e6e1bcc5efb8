"""Field values of a converted module that are neither arrays nor modules.

``jax.jit`` takes a pytree only when every leaf is an array (or a Ref), yet an Equinox
module's fields also hold booleans, functions, numbers and Equinox's own placeholders.
This module gives each such value a form ``jax.jit`` accepts while ``eqx.tree_at`` and
Equinox's methods still see what they expect:

- :class:`Flag`: a boolean field (``inference``, ``use_bias``): a pytree node with no
  children, so its value is static to ``jax.jit`` and ``eqx.tree_at`` can replace it;
- :class:`MixedList` / :class:`MixedTuple`: a list or tuple mixing data with functions
  (``layers = [Conv2d, jax.nn.relu, Linear]``): the data items are children, the rest
  is static;
- :class:`Placeholder`: Equinox's ``SharedNode``, the placeholder ``eqx.nn.Shared``
  keeps where a tied node was removed: a node with no children that ``Shared.__call__``
  (an ``eqx.tree_at``) replaces by the tied value.

Fields holding none of these and no data become static fields of the converted class
(see ``_classes.py``).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

import statetree as st

ARRAYS = (jax.Array, np.ndarray, np.generic)

# Equinox's placeholder type; `eqx.nn.Shared` is public, its placeholder's class is not
# exported, so it is read off an instance (its pytree keeps one where `where` pointed).
_SHARED_NODE: type = type(
    eqx.nn.Shared((np.zeros(1), np.zeros(1)), lambda p: p[1], lambda p: p[0]).pytree[1]
)


def is_variable(x: Any) -> bool:
    return isinstance(x, st.Variable)


def has_data(x: Any) -> bool:
    """True when the pytree ``x`` holds an array, a Variable or a Ref."""
    leaves = jtu.tree_leaves(x, is_leaf=is_variable)
    return any(isinstance(leaf, (*ARRAYS, st.Variable, jax.Ref)) for leaf in leaves)


# ----------------------------------------------------------------------------- flags
class Flag(int):
    """A module's boolean field (``inference``, ``use_bias``, ...) in a converted model.

    ``jax.jit`` cannot take a Python bool as a leaf (it would trace it, and ``if
    self.inference:`` would fail), yet ``eqx.tree_at`` and ``eqx.nn.inference_mode``
    replace the field as a node of the tree. A ``Flag`` is a pytree node with no children
    (its value is static data, so jit keys its cache on it) that tree_at can find; it
    reads as the bool it holds (``if flag:``, ``flag == True``, ``repr``)."""

    def __new__(cls, value: Any) -> "Flag":
        return super().__new__(cls, bool(value))

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__


jtu.register_pytree_node(Flag, lambda f: ((), bool(f)), lambda aux, _: Flag(aux))


class FlagField:
    """The descriptor of a flag field on a converted class: a bool assigned to it (by
    ``eqx.tree_at``'s rebuild, or Equinox's unflatten) is kept as a :class:`Flag`."""

    def __init__(self, name: str, default: Any) -> None:
        self.name = name
        self.default = default

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.default
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        is_bool = isinstance(value, (bool, np.bool_)) and not isinstance(value, Flag)
        obj.__dict__[self.name] = Flag(value) if is_bool else value


# ----------------------------------------------------------------------------- Shared
class Placeholder(_SHARED_NODE):
    """Equinox's ``SharedNode`` as a pytree node with no children: ``jax.jit`` takes it
    (a bare ``SharedNode`` is a non-array leaf), and ``eqx.tree_at`` finds and replaces
    it, so the converted ``eqx.nn.Shared.__call__`` puts the tied Variable in its place.
    All placeholders are equal, so jit's cache is not keyed on one object's identity."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SHARED_NODE)

    def __hash__(self) -> int:
        return hash(_SHARED_NODE)


jtu.register_pytree_node(Placeholder, lambda _: ((), None), lambda _aux, _: Placeholder())


def is_shared_node(x: Any) -> bool:
    return isinstance(x, _SHARED_NODE)


def shared_node() -> Any:
    """Equinox's own placeholder, for :func:`plain` trees."""
    return _SHARED_NODE()


def plain(x: Any) -> Any:
    """A field value as plain Equinox holds it: bools for flags, Equinox's placeholder."""
    if isinstance(x, Flag):
        return bool(x)
    if isinstance(x, Placeholder):
        return shared_node()
    return x


# ----------------------------------------------------------------------------- mixed lists
class MixedList(list):
    """A list field mixing data (modules, arrays) with functions and other non-array
    items (Equinox's ``layers = [Conv2d, MaxPool2d, jax.nn.relu, jnp.ravel, Linear]``):
    the data items are the pytree children, the rest is static data of the node (hashed
    into jit's cache key), so jax.jit takes it; it reads and iterates as the list."""

    __slots__ = ()


class MixedTuple(tuple):
    """The tuple form of :class:`MixedList`."""

    __slots__ = ()


def _mixed_flatten(x: Any) -> tuple[list[tuple[Any, Any]], Any]:
    data, static = [], []
    for i, item in enumerate(x):
        if is_static_item(item):
            static.append((i, item))
        else:
            data.append((jtu.SequenceKey(i), item))
    return data, (len(x), tuple(static))


def _mixed_unflattener(cls: type) -> Callable[[Any, Any], Any]:
    def unflatten(aux: Any, children: Any) -> Any:
        n, static = aux
        items: list[Any] = [None] * n
        fixed = dict(static)
        it = iter(children)
        for i in range(n):
            items[i] = fixed[i] if i in fixed else next(it)
        return cls(items)

    return unflatten


def _mixed_flatten_plain(x: Any) -> tuple[list[Any], Any]:
    keyed, static = _mixed_flatten(x)
    return [child for _, child in keyed], static


for _cls in (MixedList, MixedTuple):
    jtu.register_pytree_with_keys(
        _cls,
        _mixed_flatten,
        _mixed_unflattener(_cls),
        _mixed_flatten_plain,
    )


def is_static_item(item: Any) -> bool:
    """A non-array leaf (a function, a number, a string): static in a mixed list."""
    leaves = jtu.tree_leaves(item, is_leaf=is_variable)
    return len(leaves) == 1 and leaves[0] is item and not isinstance(item, (*ARRAYS, st.Variable))


def mix(value: Any) -> Any:
    """Lists and tuples (nested too) that mix data with static items -> mixed forms."""
    if type(value) not in (list, tuple):
        return value
    items = [mix(v) for v in value]
    if any(map(has_data, items)) and any(map(is_static_item, items)):
        return (MixedList if type(value) is list else MixedTuple)(items)
    return type(value)(items)


def is_mixed(x: Any) -> bool:
    return isinstance(x, (MixedList, MixedTuple))


# ----------------------------------------------------------------------------- hollow
def hollow_paths(tree: Any) -> tuple[list[str], int]:
    """Paths of the Variables in ``tree`` that hold no value, and how many Variables.

    Equinox's ``filter_grad``, ``filter_value_and_grad`` and ``partition`` take only
    ``jax.Array`` leaves; a mutable Variable's leaf is a ``jax.Ref``, so what they give
    back for a mutable model holds Variables with ``None`` inside ("hollow")."""
    found = jtu.tree_leaves_with_path(tree, is_leaf=is_variable)
    variables = [(p, v) for p, v in found if is_variable(v)]
    return [jtu.keystr(p) for p, v in variables if not jtu.tree_leaves(v)], len(variables)


def hollow_error(where: str, paths: list[str]) -> st.StructureError:
    shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    return st.StructureError(
        f"{where}: the Variables at {shown} hold no value. This is what eqx.filter_grad, "
        "eqx.filter_value_and_grad and eqx.partition give for a mutable model: they take "
        "only jax.Array leaves, and a mutable Variable's leaf is a jax.Ref, so they "
        "differentiate (or keep) nothing and return empty Variables. Differentiate a frozen "
        "copy instead: grads = eqx.filter_grad(loss)(statetree.adapters.equinox.freeze("
        "model), ...), then optimizer.update(model, grads)."
    )
