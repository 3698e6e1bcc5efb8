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

from typing import Any

import jax

__all__ = ["is_storage", "is_traced", "read", "write", "new_storage", "register_storage"]

# Types that implement the Ref protocol. A tuple so `isinstance` stays one C call.
_STORAGE_TYPES: tuple[type, ...] = (jax.Ref,)


def register_storage(cls: type) -> type:
    """Declare ``cls`` a mutable storage (it must follow the ``jax.Ref`` protocol)."""
    global _STORAGE_TYPES
    if cls not in _STORAGE_TYPES:
        _STORAGE_TYPES = (*_STORAGE_TYPES, cls)
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


def new_storage(value: Any) -> Any:
    """Fresh mutable storage holding ``value`` (``jax.new_ref`` copies, so later writes
    never reach ``value``)."""
    return jax.new_ref(value)
