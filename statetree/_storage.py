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

from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = [
    "is_storage",
    "is_traced",
    "read",
    "write",
    "write_many",
    "new_storage",
    "register_storage",
]

# Types that implement the Ref protocol. A tuple so `isinstance` stays one C call.
_STORAGE_TYPES: tuple[type, ...] = (jax.Ref,)
# Storage types that write many values at once better than one by one.
_BATCH_WRITERS: dict[type, Callable[[list[Any], list[Any]], None]] = {}


def register_storage(
    cls: type, write_many: Callable[[list[Any], list[Any]], None] | None = None
) -> type:
    """Declare ``cls`` a mutable storage (it must follow the ``jax.Ref`` protocol);
    ``write_many(raws, values)``, if given, writes several of them in one go."""
    global _STORAGE_TYPES
    if cls not in _STORAGE_TYPES:
        _STORAGE_TYPES = (*_STORAGE_TYPES, cls)
    if write_many is not None:
        _BATCH_WRITERS[cls] = write_many
    return cls


def is_storage(raw: Any) -> bool:
    """True when ``raw`` is mutable storage (a ``jax.Ref``, a tracer of one, a view)."""
    return isinstance(raw, _STORAGE_TYPES)


def is_traced(raw: Any) -> bool:
    """True when ``raw`` has no concrete value here (a tracer inside a transform, or a
    registered storage that says so through an ``is_traced`` property)."""
    if isinstance(raw, jax.core.Tracer):
        return True
    return bool(getattr(raw, "is_traced", False))


def read(raw: Any) -> Any:
    """The current value of ``raw`` as an array (a snapshot when ``raw`` is storage)."""
    if isinstance(raw, _STORAGE_TYPES):
        return raw[...]
    return raw


def write(raw: Any, value: Any) -> None:
    """Replace the whole value of the storage ``raw`` (shape and dtype already match)."""
    raw[...] = value


def write_many(raws: Sequence[Any], values: Sequence[Any]) -> None:
    """:func:`write` for each pair; storage types with a batch writer get one call."""
    batches: dict[type, tuple[list[Any], list[Any]]] = {}
    for raw, value in zip(raws, values, strict=True):
        if type(raw) in _BATCH_WRITERS:
            batch = batches.setdefault(type(raw), ([], []))
            batch[0].append(raw)
            batch[1].append(value)
        else:
            raw[...] = value
    for cls, (batch_raws, batch_values) in batches.items():
        _BATCH_WRITERS[cls](batch_raws, batch_values)


def new_storage(value: Any) -> Any:
    """Fresh mutable storage holding ``value`` (``jax.new_ref`` copies, so later writes
    never reach ``value``)."""
    return jax.new_ref(value)
