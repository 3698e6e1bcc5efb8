"""Equinox models under mutable-array semantics: ``mutable``, ``freeze``, ``in_place``.

``mutable(obj)`` turns an ``eqx.Module``, an ``eqx.nn.State`` or any tree of them into
the same tree with every array in a mutable Variable:

- arrays in modules become ``st.Param`` (inexact dtypes, trainable) or ``st.Variable``
  (integers, booleans); arrays in an ``eqx.nn.State`` become ``st.BatchStat`` (not
  differentiable: written under ``jax.grad`` without complaint);
- module fields that hold no arrays (activation functions, strings, numbers) become
  *static* fields, so ``jax.jit``, ``jax.vmap`` and ``jax.lax.scan`` take the model
  directly; boolean flags stay nodes of the tree, so ``eqx.tree_at`` and
  ``eqx.nn.inference_mode`` replace them; lists and tuples mixing data with functions
  keep the functions as static items. The converted module is an instance of a subclass
  of the original class: ``isinstance``, attribute reads and methods are the original's;
- an ``eqx.nn.State`` (from ``make_with_state`` or ``eqx.nn.State(model)``) becomes a
  :class:`MutableState` (a subclass), whose ``get`` gives arrays (as Equinox's) and whose
  ``set`` writes every leaf into the refs at once and returns the same object, so
  ``model(x, state)`` updates the state and the returned state may be ignored;
- ``eqx.nn.Shared`` keeps Equinox's placeholder where the tied node was removed, so the
  model holds each tied Variable once (``jax.jit`` takes it); ``shared()`` puts the very
  same Variable at both positions.

``freeze(obj)`` is the inverse: plain Equinox modules and States holding arrays.
``tree_serialise_leaves`` / ``tree_deserialise_leaves`` stand in for Equinox's, which
skip every ``jax.Ref`` (so they write nothing for a converted model).

Inside ``jax.vmap`` JAX refuses every write into a ref that is not mapped (the state is
``in_axes=None``), so a batched stateful call runs through :func:`in_place`, which calls
the function on a snapshot and commits the state it returns after the ``vmap``.

The machinery lives in ``adapters/_equinox/`` (see its README); this module is the door.
"""

from typing import Any, TypeVar

import statetree as st

try:
    import equinox as eqx
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "statetree.adapters.equinox needs Equinox, which is not installed. Install the "
        "extra: pip install 'statetree[equinox]' (the statetree core works without it)."
    ) from e

from ._equinox._convert import convert, restore
from ._equinox._fields import hollow_error, hollow_paths
from ._equinox._state import MutableState as MutableState
from ._equinox._vmap import in_place as in_place

__all__ = [
    "mutable",
    "freeze",
    "in_place",
    "MutableState",
    "tree_serialise_leaves",
    "tree_deserialise_leaves",
]

T = TypeVar("T")  # mutable/freeze return the type they are given (eqx.nn.MLP stays one)


def _refuse_hollow(tree: Any, where: str) -> None:
    """Refuse a tree whose Variables all hold no value (Equinox's ``filter_grad`` of a
    mutable model): a mistake to name, never a tree to convert or save."""
    paths, count = hollow_paths(tree)
    if paths and len(paths) == count:
        raise hollow_error(where, paths)


def mutable(obj: T) -> T:
    """``obj`` (an ``eqx.Module``, ``eqx.nn.State``, or a tree of them) with every array
    in a mutable Variable; ``jax.jit`` & co. take the result directly.

    Variables already in ``obj`` are kept, so after ``eqx.tree_at`` inserts a plain part
    into a converted model, ``mutable(model)`` converts that part and keeps the rest's
    Variables (and their storage).

    >>> import jax, equinox as eqx, statetree as st
    >>> from statetree.adapters import equinox as eqxst
    >>> model = eqxst.mutable(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
    >>> type(model.weight).__name__, model.weight.mutable, isinstance(model, eqx.nn.Linear)
    ('Param', True, True)
    """
    _refuse_hollow(obj, "mutable(obj)")
    return st.mutable(convert(obj, st.Param, ()))


def freeze(obj: T) -> T:
    """Plain Equinox again: modules of their original classes, ``eqx.nn.State``s, arrays
    (snapshots of the refs' current values), tied weights as ``eqx.nn.Shared`` has them.

    >>> import jax, equinox as eqx
    >>> from statetree.adapters import equinox as eqxst
    >>> linear = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    >>> bool(eqx.tree_equal(eqxst.freeze(eqxst.mutable(linear)), linear))
    True
    """
    _refuse_hollow(obj, "freeze(obj)")
    return restore(st.unbox(obj))


def tree_serialise_leaves(path_or_file: Any, pytree: Any, **kwargs: Any) -> None:
    """``eqx.tree_serialise_leaves`` for converted models and states.

    Equinox's own function skips every ``jax.Ref`` (a mutable Variable's leaf is one), so
    on a converted model it writes nothing. This one writes :func:`freeze`'s plain
    Equinox tree: the file is the one pure Equinox writes for the same model, and loads
    into either form. ``kwargs`` go to Equinox (``filter_spec``, ``is_leaf``).
    """
    _refuse_hollow(pytree, "tree_serialise_leaves(path_or_file, pytree)")
    eqx.tree_serialise_leaves(path_or_file, freeze(pytree), **kwargs)


def tree_deserialise_leaves(path_or_file: Any, like: Any, **kwargs: Any) -> Any:
    """``eqx.tree_deserialise_leaves`` into a converted model or state, in place.

    The file is read into :func:`freeze`'s plain copy of ``like`` by Equinox, then every
    value is written into ``like``'s Variables at once (``st.update``: kinds, shapes and
    dtypes checked first; on error nothing changes). Returns ``like``, so Equinox's
    ``model = tree_deserialise_leaves(path, model)`` reads the same. Tied weights
    (``eqx.nn.Shared``) stay tied.
    """
    loaded = eqx.tree_deserialise_leaves(path_or_file, freeze(like), **kwargs)
    converted = convert(loaded, st.Param, ())
    targets = st.state(like)
    assert isinstance(targets, st.State)
    values = st.state(converted)
    assert isinstance(values, st.State)
    found = dict(values.items())
    st.update(like, st.State({p: st.unbox(found[p]) for p in targets.paths()}))
    return like
