"""NumPy's assignment rules for writes into Variables: which dtypes may be written
(``same_kind`` casting), and what shape a value must broadcast to.

A write ``v[idx] = x`` goes through :func:`coerce`, which returns ``x`` as an array of
the Variable's dtype and of the indexed shape, or raises ``VariableWriteError`` saying
why NumPy would refuse it and how to write it instead.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import VariableWriteError

__all__ = ["coerce", "family"]

# NumPy's `same_kind` casting as a ranking of dtype families: a value may be written into
# a Variable whose family ranks the same or higher.
_FAMILIES = (
    (jnp.bool_, 0),
    (jnp.unsignedinteger, 1),
    (jnp.signedinteger, 2),
    (jnp.floating, 3),
    (jnp.complexfloating, 4),
)


def family(dtype: Any) -> int:
    """``dtype``'s rank in :data:`_FAMILIES` (-1 for dtypes outside them)."""
    for generic, rank in _FAMILIES:
        if jnp.issubdtype(dtype, generic):
            return rank
    return -1  # keys, opaque dtypes: only an exact dtype match is accepted


# Python scalars have a family but no width: they take the Variable's dtype. An `int`
# ranks as unsigned so that it may go into unsigned, signed and floating Variables alike.
_PY_FAMILIES = {bool: 0, int: 1, float: 3, complex: 4}


def _source(new: Any) -> tuple[str, str, Any, int]:
    """``(description, type name, dtype or None, family)`` of a value to be written."""
    if type(new) in _PY_FAMILIES:
        name = type(new).__name__
        return f"a Python {name}", name, None, _PY_FAMILIES[type(new)]
    dtype = jnp.result_type(new)
    rank = family(dtype)
    if rank == 2 and isinstance(new, jax.Array) and jax.typeof(new).weak_type:
        rank = 1  # a weakly typed int (from a Python int) takes the Variable's dtype
    return f"a value of dtype {dtype}", str(dtype), dtype, rank


def _can_cast(src_dtype: Any, src_family: int, dst: Any) -> bool:
    if src_dtype is not None and src_dtype == dst:
        return True
    d = family(dst)
    return src_family >= 0 and d >= 0 and src_family <= d


def _indexed_shape(shape: tuple[int, ...], idx: Any) -> tuple[int, ...]:
    """The shape ``array[idx]`` has, computed without touching any data."""
    if idx is Ellipsis:
        return shape
    try:
        # A zero-strided NumPy view: basic and NumPy-array indexing cost nothing.
        return np.broadcast_to(np.bool_(False), shape)[idx].shape
    except (IndexError, TypeError, ValueError):
        # Indices holding jax arrays or tracers: ask JAX.
        probe = jax.ShapeDtypeStruct(shape, jnp.bool_)
        return jax.eval_shape(lambda a: a[idx], probe).shape


def coerce(
    new: Any, dtype: Any, shape: tuple[int, ...], idx: Any, describe: Callable[[], str]
) -> Any:
    """``new`` as an array of ``dtype`` and of the shape ``idx`` selects from ``shape``;
    ``describe()`` names the Variable in errors."""
    described, name, src_dtype, src_family = _source(new)
    if not _can_cast(src_dtype, src_family, dtype):
        raise VariableWriteError(
            f"Cannot write {described} into {describe()}: NumPy's "
            f"'same_kind' casting does not allow {name} -> {dtype}, and a silent cast "
            f"would lose data. Convert it explicitly, e.g. x.astype({dtype}) (or "
            f"jnp.round(x).astype({dtype}))."
        )
    target = _indexed_shape(shape, idx)
    try:
        value = jnp.asarray(new, dtype=dtype)
    except OverflowError:
        # A Python int out of the dtype's range (NumPy refuses it too).
        info = jnp.iinfo(dtype) if jnp.issubdtype(dtype, jnp.integer) else None
        bounds = f" ({info.min} to {info.max})" if info is not None else ""
        raise VariableWriteError(
            f"Cannot write {new!r} into {describe()}: it is out of the range of "
            f"{dtype}{bounds}, and NumPy refuses such a write rather than wrap it "
            f"around. Write a value in range, or wrap it on purpose with "
            f"jnp.asarray(x).astype({dtype})."
        ) from None
    extra = value.ndim - len(target)
    if extra > 0 and all(d == 1 for d in value.shape[:extra]):
        # As NumPy does: leading size-1 axes beyond the target's rank are dropped
        # (v[...] = x[None] writes x); other extra axes still do not broadcast.
        value = value.reshape(value.shape[extra:])
    if value.shape != target:
        try:
            value = jnp.broadcast_to(value, target)
        except ValueError:
            where = "" if idx is Ellipsis else f" at index {idx!r}"
            raise VariableWriteError(
                f"Cannot write a value of shape {tuple(value.shape)} into "
                f"{describe()}{where}: it does not broadcast to the indexed "
                f"shape {target}. Reshape the value, or index the part you mean to write."
            ) from None
    return value
