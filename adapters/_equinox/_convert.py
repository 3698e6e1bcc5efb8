"""Converting between plain Equinox and the converted form: the walk over a tree.

:func:`convert` maps a tree of modules and States to the converted form with frozen
Variables (``mutable`` then makes them mutable with ``st.mutable``); :func:`restore`
maps an unboxed converted tree back to plain Equinox. Per module
(:func:`convert_module`): array fields become Variables (``st.Param`` for inexact
dtypes, ``st.Variable`` for integers and booleans; ``st.BatchStat`` in an
``eqx.nn.State``), boolean fields ``Flag``s, lists mixing data and functions mixed lists,
Equinox's ``SharedNode`` a ``Placeholder``, and fields with no data static; the module
is rebuilt as an instance of the converted class (``_classes.subclass``).

Variables already in the tree are kept as they are (the same objects), so converting a
model again after ``eqx.tree_at`` surgery converts only the inserted part and keeps the
rest's storage.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import statetree as st

from ._classes import equinox_fields, original, rebuild, subclass
from ._fields import (
    ARRAYS,
    Flag,
    Placeholder,
    has_data,
    is_mixed,
    is_shared_node,
    is_variable,
    mix,
    plain,
    shared_node,
)
from ._state import MutableState


def _is_node(x: Any) -> bool:
    return isinstance(x, (eqx.Module, eqx.nn.State, st.Variable)) or is_shared_node(x)


def convert(tree: Any, kind: type[st.Variable], path: tuple[Any, ...]) -> Any:
    """Arrays -> frozen Variables of ``kind`` (Param for inexact dtypes), modules ->
    converted subclasses, States -> MutableStates, throughout ``tree``."""

    def leaf(keypath: Any, x: Any) -> Any:
        where = (*path, *(_key(k) for k in keypath))
        if isinstance(x, st.Variable):
            return x
        if is_shared_node(x):
            return Placeholder()
        if isinstance(x, eqx.nn.State):
            values, keys = x.tree_flatten()
            values = tuple(convert(v, st.BatchStat, where) for v in values)
            return MutableState.tree_unflatten(keys, values)
        if isinstance(x, eqx.Module):
            return convert_module(x, where)
        if isinstance(x, ARRAYS):
            inexact = jnp.issubdtype(x.dtype, jnp.inexact)
            return (kind if kind is not st.Param or inexact else st.Variable)(x, mutable=False)
        return x

    return jtu.tree_map_with_path(leaf, tree, is_leaf=_is_node)


def _key(k: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def convert_module(module: eqx.Module, path: tuple[Any, ...]) -> eqx.Module:
    if type(module) is eqx.nn.StateIndex:  # eqx.nn.State checks its keys by exact type
        return module
    cls = original(type(module))
    declared = {f.name: f.metadata.get("static", False) for f in dataclasses.fields(cls)}
    attrs = {}
    static = set()
    flags = set()
    for name, value in vars(module).items():
        if declared.get(name, True):  # static fields and non-field attributes: as they are
            attrs[name] = value
            continue
        if isinstance(value, (bool, np.bool_)):  # a flag: a node tree_at can replace
            flags.add(name)
            attrs[name] = Flag(value)
            continue
        new = mix(convert(value, st.Param, (*path, name)))
        if not has_data(new):
            # Only fields with leaves matter: None, () or an empty module pass jit as
            # they are (and StateIndex, which eqx.nn.State checks by exact type, stays).
            if jtu.tree_leaves(new):
                static.add(name)
        else:
            _check_no_static_leaves(new, (*path, name))
        attrs[name] = new
    reads = frozenset(n for n in equinox_fields(cls) if is_variable(attrs.get(n)))
    target = subclass(cls, frozenset(static), frozenset(flags), reads)
    return rebuild(target, attrs)


def _check_no_static_leaves(value: Any, path: tuple[Any, ...]) -> None:
    leaves = jtu.tree_leaves_with_path(value, is_leaf=is_variable)
    bad = [
        (*path, *(_key(k) for k in kp), type(x).__name__)
        for kp, x in leaves
        if not isinstance(x, (*ARRAYS, st.Variable, jax.Ref))
    ]
    if bad:
        listed = ", ".join(f"{'.'.join(map(str, b[:-1]))} ({b[-1]})" for b in bad)
        raise st.StructureError(
            f"mutable(obj): the field at {'.'.join(map(str, path))} mixes arrays with "
            f"non-array values: {listed}. jax.jit cannot take non-array leaves, and a field "
            "is made static only as a whole. Move them into a field of their own, wrap a "
            "function in eqx.nn.Lambda, or declare them eqx.field(static=True)."
        )


def restore(tree: Any) -> Any:
    """Inverse of the structural part of :func:`convert` on an unboxed tree."""

    def leaf(x: Any) -> Any:
        if isinstance(x, Placeholder):
            return shared_node()
        if isinstance(x, eqx.nn.State):
            values, keys = x.tree_flatten()
            return eqx.nn.State.tree_unflatten(keys, values)
        if is_mixed(x):
            items = [restore(item) for item in x]
            return items if isinstance(x, list) else tuple(items)
        if isinstance(x, eqx.Module):
            attrs = {k: restore(plain(v)) for k, v in vars(x).items()}
            return rebuild(original(type(x)), attrs)
        return x

    return jtu.tree_map(
        leaf,
        tree,
        is_leaf=lambda x: isinstance(x, (eqx.Module, eqx.nn.State, Placeholder)) or is_mixed(x),
    )
