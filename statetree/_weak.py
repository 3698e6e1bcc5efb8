"""Weak types kept by Variables on every JAX.

JAX marks a value made from a Python scalar (``jnp.asarray(0.5)``) *weakly typed*: it
takes the dtype of the array it meets (``0.5 * bf16_array`` is bfloat16). ``jax.new_ref``
keeps the weak type up to JAX 0.11.1 and drops it from 0.11.2, so a mutable Variable's
Ref alone would silently change its promotion on newer JAX. A Variable therefore
remembers the weak type in its static metadata (``Variable._metadata``: it travels with
the Variable through every conversion, and through ``jax.jit`` as pytree aux data) and
marks its reads weakly typed again (:func:`as_weak`).
"""

from typing import Any

from . import _jax

__all__ = ["WEAK_TYPE", "is_weak", "weak_metadata", "as_weak"]


# Marking an array weakly typed has no public spelling: the door (statetree._jax) holds
# it, or None where this JAX changed it (reads then stay strongly typed, never an error).
_to_weak = _jax.to_weak


class _WeakType:
    """The key of the entry that marks a weakly typed Variable in its static metadata
    (``Variable._metadata``, which travels with it through every conversion and through
    ``jax.jit`` as pytree aux data; ``v.metadata`` does not show it). One instance,
    kept one by pickling."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "weak_type"

    def __reduce__(self) -> str:
        return "WEAK_TYPE"


WEAK_TYPE = _WeakType()
_WEAK_ENTRY = (WEAK_TYPE, True)


def is_weak(metadata: tuple[tuple[Any, Any], ...]) -> bool:
    """Whether a Variable's static metadata marks it weakly typed."""
    return bool(metadata) and metadata[0][0] is WEAK_TYPE


def weak_metadata(array: Any, metadata: tuple[tuple[Any, Any], ...] = ()) -> Any:
    """``metadata`` for a Variable made from ``array``: marked weakly typed when
    ``array`` is (a Python scalar's ``jnp.asarray``), so the Variable keeps the
    promotion of the value it was given."""
    if getattr(array, "weak_type", False) and not is_weak(metadata):
        return (_WEAK_ENTRY, *metadata)
    return metadata


def as_weak(array: Any) -> Any:
    """``array`` weakly typed (unchanged when it is already, or cannot be made so)."""
    if getattr(array, "weak_type", True) or _to_weak is None:
        return array
    return _to_weak(array)
