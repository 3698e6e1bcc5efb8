"""Whole-tree conversion: ``st.mutable``, ``st.freeze``, ``st.unbox``.

Each is one pass of the shared traversal (:mod:`statetree._graph`): flatten, map every
distinct value once, unflatten. Mapping each *distinct* Variable once is what keeps
sharing: two paths that held one Variable hold one (new) Variable after.
"""

import operator
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, overload

import jax.numpy as jnp

from . import _graph, _packed
from ._errors import VariableWriteError
from ._filters import needs_path, to_predicate
from ._graph import GraphDef
from ._packed import Packed
from ._variables import UNHOLDABLE_FIX, Variable, unholdable
from ._variables import raw_of as _raw_of
from ._weak import WEAK_TYPE, as_weak, weak_metadata
from ._write import bulk as _bulk
from ._write import plan as _plan
from ._write import storage as _storage

__all__ = ["mutable", "freeze", "unbox"]

# mutable/freeze return the type they are given (an IDE keeps `eqx.nn.MLP`, a dict, ...).
T = TypeVar("T")


def _chosen(graphdef: GraphDef, values: list[Any], only: Any) -> list[bool]:
    """Which of a flattened tree's ``values`` the filter ``only`` selects."""
    if only is Ellipsis:
        return [True] * len(values)
    predicate = to_predicate(only)
    paths = graphdef.paths() if needs_path(only) else None
    return [bool(predicate(paths[i] if paths else (), v)) for i, v in enumerate(values)]


def _map_values(
    tree: Any, fn: Callable[[Any], Any], only: Any, who: str = "", pack: bool = False
) -> Any:
    """``tree`` with every value ``only`` selects replaced by ``fn(value)``; with
    ``pack``, the selected values are instead packed together (``fn`` is not used).
    ``who`` names the caller when deleted (donated) arrays must be refused first."""
    graphdef, values = _graph.flatten(tree)
    if who:  # refuse deleted (donated) arrays by path before converting any
        _plan.check_readable(values, graphdef.paths, who)
    chosen = _chosen(graphdef, values, only)
    if who:  # and values no Ref can hold (JAX's own error names no path)
        _plan.refuse_values(
            [v if take else None for v, take in zip(values, chosen, strict=True)],
            unholdable,
            graphdef.paths,
            VariableWriteError,
            f"{who}: {{n}} value(s) cannot become jax.Refs; nothing was converted:",
            UNHOLDABLE_FIX,
        )
    if pack:
        new = _packed.pack(values, chosen)
        return _packed.assemble(_graph.unflatten(graphdef, new), graphdef, new)
    new = [fn(v) if take else v for v, take in zip(values, chosen, strict=True)]
    return _graph.unflatten(graphdef, new)


def _map_read(
    tree: Any, fn: Callable[[Any, Any], Any], only: Any, rest: Callable[[Any], Any] | None = None
) -> Any:
    """``tree`` with every value ``only`` selects that holds mutable storage replaced by
    ``fn(value, array)``, ``array`` its current value: the storages are read together
    (one dispatch per chunk of Refs, not one per Ref: see :mod:`statetree._bulk`).
    Other selected values become ``rest(value)`` if ``rest`` is given."""
    graphdef, values = _graph.flatten(tree)
    if only is Ellipsis and None not in graphdef.kinds:  # every value a Variable
        raws = list(map(_raw_of, values))
        if _bulk.all_refs(raws):  # all mutable, plain Refs
            arrays = _storage.read_all(raws)
            metadata = list(map(_metadata_of, values))
            _weak_again(metadata, arrays)
            if fn is _to_frozen_array:
                return _graph.unflatten(graphdef, arrays)
            if fn is _to_frozen:
                return _graph.unflatten(graphdef, _frozen_all(graphdef.kinds, metadata, arrays))
            return _graph.unflatten(graphdef, list(map(fn, values, arrays)))
    chosen = _chosen(graphdef, values, only)
    new = list(values)
    where, raws = [], []
    for i, (value, take) in enumerate(zip(values, chosen, strict=True)):
        raw = _raw_of(value) if isinstance(value, Variable) else value
        if take and _storage.is_storage(raw):
            where.append(i)
            raws.append(raw)
        elif take and rest is not None:
            new[i] = rest(value)
    arrays = _storage.read_all(raws)
    _weak_again([getattr(values[i], "_metadata", ()) for i in where], arrays)
    for i, array in zip(where, arrays, strict=True):
        new[i] = fn(values[i], array)
    return _graph.unflatten(graphdef, new)


def _weak_again(metadata: list[Any], arrays: list[Any]) -> None:
    """Make ``arrays[i]`` weakly typed where ``metadata[i]`` marks its Variable so: the
    snapshot of a weakly typed Variable is a weakly typed array on every JAX, also where
    its Ref dropped the weak type (``jax.new_ref``, from JAX 0.11.2)."""
    if metadata.count(()) == len(metadata):  # C-level: no Variable carries any
        return
    for i, entries in enumerate(metadata):
        if entries and entries[0][0] is WEAK_TYPE:
            arrays[i] = as_weak(arrays[i])


def _to_mutable(value: Any) -> Any:
    if isinstance(value, Variable):
        if value.mutable:
            return value
        kind = type(value)
        storage = _storage.new_storage(_raw_of(value), kind.differentiable)
        # A frozen Variable whose array is weakly typed (JAX's own maps can make one)
        # stays so once mutable, where the Ref does not keep the weak type.
        return kind._from_raw(storage, weak_metadata(_raw_of(value), value._metadata))
    if _storage.is_storage(value):
        return value
    array = jnp.asarray(value)
    return Variable._from_raw(_storage.new_storage(array), weak_metadata(array))


def _to_frozen(value: Any, array: Any) -> Any:
    if isinstance(value, Variable):
        return type(value)._from_raw(array, value._metadata)
    return array


# A Variable's two slots, set directly (what Variable._from_raw does, in C-level maps).
_SET_RAW = Variable._raw.__set__
_SET_METADATA = Variable._metadata.__set__  # type: ignore[attr-defined]  # a slot
_metadata_of = operator.attrgetter("_metadata")


def _frozen_all(kinds: Sequence[Any], metadata: list[Any], arrays: list[Any]) -> list[Any]:
    """``_to_frozen(values[i], arrays[i])`` for Variables of ``kinds`` with ``metadata``:
    new Variables of the same kinds and metadata holding ``arrays``, made without a
    Python call per Variable (a 100k-Variable freeze spends a large share of its time
    here)."""
    new = list(map(object.__new__, kinds))
    deque(map(_SET_RAW, new, arrays), maxlen=0)
    deque(map(_SET_METADATA, new, metadata), maxlen=0)
    return new


def _to_frozen_array(value: Any, array: Any) -> Any:
    return array


def _to_array(value: Any) -> Any:
    """A value holding no storage: a frozen Variable's array (weakly typed if the
    Variable is), anything else itself."""
    return value.value if isinstance(value, Variable) else value


@overload
def mutable(tree: T, only: Any = ..., packed: Literal[False] = False) -> T: ...
@overload
def mutable(tree: Any, only: Any = ..., *, packed: Literal[True]) -> Packed: ...
@overload
def mutable(tree: T, only: Any = ..., packed: bool = False) -> T | Packed: ...
def mutable(tree: Any, only: Any = ..., packed: bool = False) -> Any:
    """A new tree in which every Variable (matching ``only``) is mutable.

    Bare array leaves become mutable ``st.Variable``s; non-array leaves (ints, strings,
    functions, ``None``) are left alone; Variables that are already mutable are kept (the
    same object); raw Refs are kept. Sharing is preserved: one Variable, Ref or registered
    node at several paths is one object after. Arrays are values: the same array at two
    paths becomes two independent Variables. The input is not modified.

    Inside ``jax.jit`` the result cannot be returned (JAX refuses Refs as outputs): build
    the tree frozen inside jit and call ``st.mutable`` outside.

    Args:
      tree: any pytree (registered nodes included).
      only: a filter (see ``st.split``): only the values it matches are converted.
        Default ``...``: all of them.
      packed: copy the values (matching ``only``) into a few flat buffers, one
        ``jax.Ref`` per bit width and sharding, and return a ``st.Packed`` tree whose
        Variables are views into them: ``jax.jit`` then dispatches a few Refs instead of
        one per Variable. It reads, writes, iterates and calls like the tree;
        ``st.freeze`` unpacks it. Arrays of ``2**20`` elements or more keep a Ref of
        their own (there a Ref's dispatch costs less than the step's own work, and a
        packed slice would be copied). Keep the plain form where each Variable must
        stay its own array (``jax.lax.scan`` over stacked layers). See docs/packed.md.

    Returns:
      The converted tree, of the same structure (a ``st.Packed`` wrapping it when
      ``packed=True``).

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> model = st.mutable({"w": jnp.ones(2), "act": "relu"})
      >>> model["w"], model["act"]
      (Variable(float32[2], mutable=True, value=[1., 1.]), 'relu')

      Only some kinds:

      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(()))}
      >>> half = st.mutable(tree, only=st.BatchStat)
      >>> half["w"].mutable, half["n"].mutable
      (False, True)
    """
    if packed and isinstance(tree, _packed.Packed):
        tree = tree._tree  # pack again: its values are copied into new buffers
    return _map_values(tree, _to_mutable, only, "mutable", pack=packed)


def freeze(tree: T, only: Any = ...) -> T:
    """A new tree in which mutable Variables (matching ``only``) are frozen snapshots and
    raw ``jax.Ref`` leaves are arrays.

    Sharing is preserved; the input is not modified, and later writes to it do not reach
    the snapshot. Freeze before differentiating (``jax.grad(loss)(st.freeze(params))``)
    and before returning a tree from ``jax.jit``.

    Args:
      tree: any pytree (registered nodes included).
      only: a filter (see ``st.split``): only the values it matches are frozen.
        Default ``...``: all of them.

    Returns:
      The frozen tree, of the same structure.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> model = st.mutable({"w": jnp.zeros(2)})
      >>> frozen = st.freeze(model)
      >>> model["w"][...] = 1.0           # the snapshot does not change
      >>> frozen["w"]
      Variable(float32[2], mutable=False, value=[0., 0.])
    """
    return _map_read(tree, _to_frozen, only)


def unbox(tree: Any) -> Any:
    """Replace every Variable (and raw Ref) by its current array value: a pure pytree.

    ``st.unbox(st.freeze(st.mutable(t)))`` equals ``t`` for any pytree of arrays.

    Args:
      tree: any pytree.

    Returns:
      The tree with arrays where it had Variables and Refs.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> st.unbox({"w": st.Param(jnp.ones(2), mutable=True), "k": 3})
      {'k': 3, 'w': Array([1., 1.], dtype=float32)}
    """
    return _map_read(tree, _to_frozen_array, ..., rest=_to_array)
