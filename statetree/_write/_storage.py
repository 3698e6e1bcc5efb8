"""Where a Variable keeps its array: the one small interface between a Variable and its
storage.

A Variable holds one *raw* object:

- a ``jax.Array`` (or a tracer of one): the Variable is **frozen**;
- a *mutable storage*: anything that follows the ``jax.Ref`` protocol, that is
  ``raw[...]`` reads the whole value, ``raw[...] = x`` replaces it, and ``shape``,
  ``dtype``, ``ndim`` describe it. ``jax.Ref`` (and its tracers inside ``jax.jit``) is
  the built-in one; packed views register themselves with :func:`register_storage`.

Nothing else in statetree looks inside a raw object: it goes through the functions below.
"""

import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .. import _recall
from .._jax import Tracer
from . import _bulk

__all__ = [
    "is_storage",
    "is_traced",
    "read",
    "read_all",
    "write",
    "write_all",
    "write_checked",
    "write_at",
    "set_at",
    "new_storage",
    "register_storage",
]

# Types that implement the Ref protocol. A tuple so `isinstance` stays one C call.
_STORAGE_TYPES: tuple[type, ...] = (jax.Ref,)
# Storage types that can carry out many whole-value writes better together than one by
# one (views into one buffer: one write of the buffer instead of one per view).
_WRITE_MANY: dict[type, Callable[[list[tuple[Any, Any]]], None]] = {}


def register_storage(
    cls: type, write_many: Callable[[list[tuple[Any, Any]]], None] | None = None
) -> type:
    """Declare ``cls`` a mutable storage (it must follow the ``jax.Ref`` protocol).

    ``write_many``, if given, carries out a list of ``(raw, value)`` whole-value writes
    into storages of this type, as :func:`write_all` hands them over: in order, the last
    write to a storage winning.
    """
    global _STORAGE_TYPES
    if cls not in _STORAGE_TYPES:
        _STORAGE_TYPES = (*_STORAGE_TYPES, cls)
    if write_many is not None:
        _WRITE_MANY[cls] = write_many
    return cls


def is_storage(raw: Any) -> bool:
    """True when ``raw`` is mutable storage (a ``jax.Ref``, a tracer of one, a view)."""
    return isinstance(raw, _STORAGE_TYPES)


def is_traced(raw: Any) -> bool:
    """True when ``raw`` has no concrete value here (a tracer inside a transform, or a
    registered storage that says so through an ``is_traced`` property)."""
    if isinstance(raw, Tracer):
        return True
    return bool(getattr(raw, "is_traced", False))


def read(raw: Any) -> Any:
    """The current value of ``raw`` as an array (a snapshot when ``raw`` is storage). In
    a trace that wrote ``raw``, with the gradient of the value written
    (:mod:`statetree._recall`)."""
    if isinstance(raw, _STORAGE_TYPES):
        if _recall.live:
            hit = _recall.recall(raw)
            if hit is not None:
                return hit
        return raw[...]
    return raw


def read_all(raws: Sequence[Any]) -> list[Any]:
    """:func:`read` of each of ``raws``; concrete ``jax.Ref``s are read together
    (:mod:`statetree._bulk`: one dispatch per chunk instead of one per Ref)."""
    if _recall.live:  # inside a trace that wrote: reads take the writes' gradients
        return list(map(read, raws))
    if _bulk.all_refs(raws):  # the common case: no other storage
        return _bulk.read_refs(raws)
    out = list(raws)
    refs: list[int] = []
    for i, raw in enumerate(raws):
        if _is_concrete_ref(raw):
            refs.append(i)
        elif isinstance(raw, _STORAGE_TYPES):
            out[i] = raw[...]
    if refs:
        for i, value in zip(refs, _bulk.read_refs([raws[i] for i in refs]), strict=True):
            out[i] = value
    return out


_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def _is_concrete_ref(raw: Any) -> bool:
    return isinstance(raw, jax.Ref) and not isinstance(raw, Tracer)


def write(raw: Any, value: Any) -> None:
    """Replace the whole value of the storage ``raw`` (shape and dtype already match)."""
    raw[...] = value


def write_all(writes: Sequence[tuple[Any, Any]]) -> None:
    """:func:`write` for each ``(raw, value)``, in order; storages registered with a
    ``write_many`` get theirs in one call (for packed views: one write per buffer)."""
    raws = list(map(_first, writes))
    if _bulk.all_refs(raws) and len(set(map(id, raws))) == len(raws):
        _bulk.write_refs(raws, list(map(_second, writes)))  # distinct concrete Refs
        return
    batched: dict[Callable[[list[tuple[Any, Any]]], None], list[tuple[Any, Any]]] = {}
    refs: dict[int, tuple[Any, Any]] = {}  # concrete Refs by id: the last write wins
    for raw, value in writes:
        many = _WRITE_MANY.get(type(raw))
        if many is not None:
            batched.setdefault(many, []).append((raw, value))
        elif _is_concrete_ref(raw):
            refs.pop(id(raw), None)
            refs[id(raw)] = (raw, value)
        else:
            raw[...] = value
    if refs:
        _bulk.write_refs([r for r, _ in refs.values()], [v for _, v in refs.values()])
    for many, pairs in batched.items():
        many(pairs)


def write_checked(refs: list[Any], values: list[Any], types: Any, buffers: list[Any]) -> None:
    """Whole-value writes ``refs[i][...] = values[i]`` that the write plan accepted
    under the fast-path contract (README.md beside this file), not checked again:
    ``buffers`` are the arrays the Refs keep and ``types`` theirs."""
    _bulk.write_checked(refs, values, types, buffers)


def write_at(raw: Any, idx: Any, value: Any) -> None:
    """Replace ``raw[idx]`` (``value`` already has the indexed shape and ``raw``'s dtype).

    Goes through the whole value (``read``, ``.at[idx].set``, ``write``) so NumPy's
    indexing rules hold. Under a mesh with *explicit* axes, JAX cannot infer where the
    result of a scatter into a sharded array lives, so the storage's own sharding is
    spelled out: the storage keeps its sharding, as it does under automatic axes.
    """
    raw[...] = set_at(read(raw), idx, value)


def set_at(current: Any, idx: Any, value: Any) -> Any:
    """``current`` with ``current[idx]`` replaced by ``value``, keeping the sharding of
    ``current`` under a mesh with explicit axes (see :func:`write_at`)."""
    sharding = _explicit_sharding(current)
    if sharding is None:
        return current.at[idx].set(value)
    if isinstance(current, Tracer):
        return current.at[idx].set(value, out_sharding=sharding)
    # Eagerly, JAX 0.12.1's `out_sharding=` no longer wraps the scatter in `auto_axes`
    # (it reshards the update instead, which fails): wrap it here, on the storage's own
    # mesh, on every JAX.

    def scatter(pair: tuple[Any, Any]) -> Any:
        return pair[0].at[idx].set(pair[1])

    with jax.set_mesh(sharding.mesh):
        return jax.sharding.auto_axes(scatter, out_sharding=sharding.spec)((current, value))


def _explicit_sharding(array: Any) -> Any:
    """``array``'s sharding when its mesh has an explicit axis, else None."""
    sharding = jax.typeof(array).sharding
    mesh = getattr(sharding, "mesh", None)
    if jax.sharding.AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return None
    # A concrete array's own sharding names real devices; a tracer's names the abstract
    # mesh, which is all `jax.jit` needs.
    return sharding if isinstance(array, Tracer) else array.sharding


# The Ref kind of state that is not differentiated: JAX neither differentiates through
# it nor replays its reads and writes when `jax.checkpoint` (remat) recomputes the
# forward pass, so a counter bumped inside a rematerialized function is bumped once.
NO_GRAD_NO_REMAT = "no_grad_no_remat"


def new_storage(value: Any, differentiable: bool = True) -> Any:
    """Fresh mutable storage holding ``value`` (``jax.new_ref`` copies, so later writes
    never reach ``value``).

    ``differentiable=False`` (the kinds whose ``differentiable`` is False: batch
    statistics, caches, optimizer state) makes a Ref of JAX's ``no_grad_no_remat`` kind:
    its writes are state, carried out once, never recomputed by ``jax.checkpoint``.
    Differentiable kinds keep JAX's default kind, through which gradients can flow (a
    Ref made from a differentiated value inside ``jax.grad``).
    """
    if differentiable:
        return jax.new_ref(value)
    return jax.new_ref(value, kind=NO_GRAD_NO_REMAT)
