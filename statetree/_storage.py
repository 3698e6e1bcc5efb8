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

__all__ = [
    "is_storage",
    "is_traced",
    "read",
    "write",
    "write_at",
    "new_storage",
    "register_storage",
]

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


def write_at(raw: Any, idx: Any, value: Any) -> None:
    """Replace ``raw[idx]`` (``value`` already has the indexed shape and ``raw``'s dtype).

    Goes through the whole value (``read``, ``.at[idx].set``, ``write``) so NumPy's
    indexing rules hold. Under a mesh with *explicit* axes, JAX cannot infer where the
    result of a scatter into a sharded array lives, so the storage's own sharding is
    spelled out: the storage keeps its sharding, as it does under automatic axes.
    """
    current = read(raw)
    sharding = _explicit_sharding(current)
    if sharding is None:
        new = current.at[idx].set(value)
    else:
        new = current.at[idx].set(value, out_sharding=sharding)
    raw[...] = new


def _explicit_sharding(array: Any) -> Any:
    """``array``'s sharding when its mesh has an explicit axis, else None."""
    sharding = jax.typeof(array).sharding
    mesh = getattr(sharding, "mesh", None)
    if jax.sharding.AxisType.Explicit not in getattr(mesh, "axis_types", ()):
        return None
    # A concrete array's own sharding names real devices; a tracer's names the abstract
    # mesh, which is all `jax.jit` needs.
    return sharding if isinstance(array, jax.core.Tracer) else array.sharding


def new_storage(value: Any) -> Any:
    """Fresh mutable storage holding ``value`` (``jax.new_ref`` copies, so later writes
    never reach ``value``)."""
    return jax.new_ref(value)
