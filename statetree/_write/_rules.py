"""NumPy's assignment rules for writes into Variables: which dtypes may be written
(``same_kind`` casting), and what shape a value must broadcast to.

A write ``v[idx] = x`` goes through :func:`coerce`, which returns ``x`` as an array of
the Variable's dtype and of the indexed shape, or raises ``VariableWriteError`` saying
why NumPy would refuse it and how to write it instead.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax
from .._errors import UnreadableValueError, VariableIndexError, VariableWriteError
from .._jax import Tracer
from . import _storage

__all__ = ["check_index", "coerce", "family", "require_readable", "scalar", "unreadable"]

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


# Values that are no array at all: JAX would read a string as a dtype name and None as
# float32 (`jnp.result_type(None)`), so they are refused by type before JAX sees them.
_NOT_ARRAYS = (str, bytes, type(None), Mapping, set, frozenset)


def scalar(new: Any) -> Any:
    """A NumPy scalar (``np.int64(300)``) as the Python scalar of its value, so that it
    takes the Variable's dtype and is range-checked as a Python scalar is; anything else
    unchanged. (``jnp.asarray(np.int64(300), jnp.int8)`` would wrap it to 44.)"""
    if isinstance(new, np.generic) and new.dtype.kind in "biufc":
        return new.item()
    return new


def _source(new: Any, describe: Callable[[], str]) -> tuple[str, str, Any, int]:
    """``(description, type name, dtype or None, family)`` of a value to be written."""
    if type(new) in _PY_FAMILIES:
        name = type(new).__name__
        return f"a Python {name}", name, None, _PY_FAMILIES[type(new)]
    if isinstance(new, _NOT_ARRAYS):
        what = "None" if new is None else f"the {type(new).__name__} {_short(new)}"
        raise VariableWriteError(
            f"Cannot write {what} into {describe()}: a Variable "
            "holds an array, and this value is not one. Write an array or a number of "
            "the Variable's shape (v[...] = jnp.zeros(v.shape, v.dtype)); to store text or "
            "None, keep it beside the Variable, not in it."
        )
    try:
        dtype = jnp.result_type(new)
    except TypeError as e:
        raise VariableWriteError(
            f"Cannot write a {type(new).__name__} into {describe()}: it is not an array "
            f"({e}). Write an array or a number of the Variable's shape."
        ) from None
    rank = family(dtype)
    if rank == 2 and isinstance(new, jax.Array) and jax.typeof(new).weak_type:
        rank = 1  # a weakly typed int (from a Python int) takes the Variable's dtype
    return f"a value of dtype {dtype}", str(dtype), dtype, rank


def _can_cast(src_dtype: Any, src_family: int, dst: Any) -> bool:
    if src_dtype is not None and src_dtype == dst:
        return True
    d = family(dst)
    return src_family >= 0 and d >= 0 and src_family <= d


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def check_index(
    shape: tuple[int, ...], idx: Any, describe: Callable[[], str]
) -> tuple[int, ...] | None:
    """The shape ``array[idx]`` has, computed without touching any data; None when the
    index holds traced values (its range is not known here).

    A static index that NumPy refuses (an integer out of range, too many indices, a
    float) raises :class:`VariableIndexError`: JAX would clip a read and drop a write.
    Slices clip, as in NumPy.
    """
    if type(idx) is int and shape and -shape[0] <= idx < shape[0]:
        return shape[1:]  # the common case, without NumPy
    try:
        # A zero-strided NumPy view: basic and NumPy-array indexing cost nothing.
        return np.broadcast_to(np.bool_(False), shape)[idx].shape
    except IndexError as e:
        raise VariableIndexError(
            f"Index {_short(idx)} does not fit {describe()} (shape {shape}): {e}. NumPy "
            "refuses such an index; JAX would silently clip a read and drop a write out "
            "of range. Index within the shape (slices clip), or read v[...].at[idx].get("
            "mode='fill') if out-of-range positions are meant to be skipped."
        ) from None
    except (TypeError, ValueError):
        return None  # traced or JAX-only indices: JAX checks what it can


def _indexed_shape(shape: tuple[int, ...], idx: Any, describe: Callable[[], str]) -> Any:
    """The shape ``array[idx]`` has (refusing static indices out of range)."""
    if idx is Ellipsis:
        return shape
    static = check_index(shape, idx, describe)
    if static is not None:
        return static
    # Indices holding tracers: ask JAX.
    probe = jax.ShapeDtypeStruct(shape, jnp.bool_)
    return jax.eval_shape(lambda a: a[idx], probe).shape


def unreadable(x: Any) -> str | None:
    """Why the array (or storage) ``x`` cannot be read, as a clause whose subject is
    ``x`` ("was deleted ..."), or None when it can: a deleted (donated) array, or a
    tracer that escaped the transform that made it."""
    if isinstance(x, jax.Array) and not isinstance(x, Tracer):
        if x.is_deleted():
            return (
                "was deleted (donated to a jax.jit call with donate_argnums, or "
                ".delete()d), so there is no value to read. Use the value the donating call "
                "returned, or keep a copy (jnp.array(x)) before donating"
            )
        return None
    if isinstance(x, Tracer):
        if _jax.escaped(x):
            return (
                "is a tracer that escaped the jax.jit/grad/vmap call that made it "
                "(stored on an object or a global during tracing). Return the value from "
                "the transformed function and write it outside"
            )
        return None
    if _storage.is_storage(x):  # a packed view: its buffer
        buffer = getattr(x, "buffer", None)
        return None if buffer is None else unreadable(buffer)
    return None


def require_readable(x: Any, describe: Callable[[], str]) -> None:
    """Raise :class:`UnreadableValueError` when ``x`` cannot be read (see
    :func:`unreadable`); ``describe()`` names what it is."""
    reason = unreadable(x)
    if reason is not None:
        raise UnreadableValueError(f"Cannot use {describe()}: it {reason}.")


def coerce(
    new: Any, dtype: Any, shape: tuple[int, ...], idx: Any, describe: Callable[[], str]
) -> Any:
    """``new`` as an array of ``dtype`` and of the shape ``idx`` selects from ``shape``;
    ``describe()`` names the Variable in errors."""
    new = scalar(new)
    described, name, src_dtype, src_family = _source(new, describe)
    if not _can_cast(src_dtype, src_family, dtype):
        raise VariableWriteError(
            f"Cannot write {described} into {describe()}: NumPy's "
            f"'same_kind' casting does not allow {name} -> {dtype}, and a silent cast "
            f"would lose data. Convert it explicitly, e.g. x.astype({dtype}) (or "
            f"jnp.round(x).astype({dtype}))."
        )
    target = _indexed_shape(shape, idx, describe)
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
