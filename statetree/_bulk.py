"""Eager reads and writes of many concrete ``jax.Ref``s at once.

Outside a trace, ``ref[...]`` and ``ref[...] = x`` are each a separate JAX dispatch
(tens of microseconds), so ``st.freeze`` or ``st.update`` of 100,000 Variables spent
seconds in them, 100x more than ``jax.tree_util`` needs to flatten and unflatten the
same tree. Here they are grouped by shape, dtype and sharding, and each group goes
through one jitted call per chunk of up to :data:`CHUNK` Refs. Chunks have power-of-two
sizes, so a group compiles at most a handful of functions, which ``jax.jit`` caches for
every later call.

- Reads copy each Ref's current buffer in one call per chunk. The buffer is the array a
  concrete ``jax.Ref`` keeps (JAX's own attribute ``_refs._buf``: read only, never
  written here). A copy is required: a later in-place step writes into that buffer.
  Where JAX keeps the buffer elsewhere (another JAX version), the Refs themselves go
  to one jitted read per chunk (JAX dispatches a Ref argument on a slower path, so
  that is a few times slower, still far from one dispatch per Ref).
- Writes copy the new values in one call per chunk and hand each copy to its Ref's
  buffer with ``_replace_with``: what JAX itself does with the output of a jitted
  call that wrote a Ref (``jax/_src/interpreters/pxla.py``). The copy is fresh, so
  the Ref never shares memory with the caller's array. Where JAX has no such buffer,
  the Refs and values go to one jitted function per chunk that writes them.

Groups smaller than :data:`MIN_GROUP` go one by one: a few Refs are not worth a compile.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.core  # jax.core.Tracer below; an explicit import for type checkers
import jax.numpy as jnp
import numpy as np

__all__ = ["read_refs", "write_refs", "CHUNK", "MIN_GROUP"]

CHUNK = 256
MIN_GROUP = 16


@jax.jit
def _copy_arrays(arrays: list[Any]) -> list[Any]:
    return [jnp.copy(a) for a in arrays]


@jax.jit
def _read_refs(refs: list[Any]) -> list[Any]:
    return [r[...] for r in refs]


@jax.jit
def _write_refs(refs: list[Any], values: list[Any]) -> None:
    for r, v in zip(refs, values, strict=True):
        r[...] = v


def _buffer(ref: Any) -> Any:
    """The array a concrete ``jax.Ref`` keeps, or None where JAX keeps it elsewhere."""
    buf = getattr(getattr(ref, "_refs", None), "_buf", None)
    return buf if isinstance(buf, jax.Array) and not isinstance(buf, jax.core.Tracer) else None


def _chunks(members: list[int]) -> list[list[int]]:
    """``members`` cut into runs of :data:`CHUNK`, then of falling powers of two."""
    out, start, n = [], 0, len(members)
    size = CHUNK
    while start < n:
        while size > n - start:
            size //= 2
        out.append(members[start : start + size])
        start += size
    return out


def _grouped(keys: Sequence[Any]) -> tuple[list[list[int]], list[int]]:
    """Positions grouped by key (None: alone), and those left to go one by one."""
    groups: dict[Any, list[int]] = {}
    alone = []
    for i, key in enumerate(keys):
        if key is None:
            alone.append(i)
        else:
            groups.setdefault(key, []).append(i)
    batched = []
    for members in groups.values():
        if len(members) < MIN_GROUP:
            alone.extend(members)
        else:
            batched.extend(_chunks(members))
    return batched, alone


def _replaceable(ref: Any) -> Any:
    """The buffer of ``ref`` if it can take a new array in place, else None."""
    buf = _buffer(ref)
    return buf if buf is not None and hasattr(buf, "_replace_with") else None


def _key(array: Any) -> Any:
    """What arrays (or Refs) read in one call share: type (weak typing included) and
    sharding."""
    aval = array.aval
    return (getattr(aval, "inner_aval", aval), array.sharding)


def read_refs(refs: Sequence[Any]) -> list[Any]:
    """The current value of each concrete ``jax.Ref`` in ``refs``, as fresh arrays that
    later writes into the Refs do not reach."""
    buffers = [_buffer(r) for r in refs]
    fast = all(b is not None for b in buffers)
    keys = [_key(b) for b in buffers] if fast else [_key(r) for r in refs]
    batched, alone = _grouped(keys)
    out: list[Any] = [None] * len(refs)
    for chunk in batched:
        if fast:
            values = _copy_arrays([buffers[i] for i in chunk])
        else:
            values = _read_refs([refs[i] for i in chunk])
        for i, value in zip(chunk, values, strict=True):
            out[i] = value
    for i in alone:
        out[i] = refs[i][...]
    return out


def _on_device(refs: Sequence[Any], values: Sequence[Any]) -> Sequence[Any]:
    """``values`` with the NumPy ones of their Ref's shape and dtype (what a checkpoint
    gives) put on their Ref's sharding in one batched transfer, when there are enough
    of them to be worth it."""
    host = [
        i
        for i, v in enumerate(values)
        if isinstance(v, np.ndarray) and v.shape == refs[i].shape and v.dtype == refs[i].dtype
    ]
    if len(host) < MIN_GROUP:
        return values
    out = list(values)
    placed = jax.device_put([values[i] for i in host], [refs[i].sharding for i in host])
    for i, array in zip(host, placed, strict=True):
        out[i] = array
    return out


def write_refs(refs: Sequence[Any], values: Sequence[Any]) -> None:
    """``ref[...] = value`` for each pair; the values already have their Ref's shape
    and dtype. Values that are not concrete arrays of their Ref's type (weak typing
    included) and sharding go one by one."""
    values = _on_device(refs, values)
    buffers = [_replaceable(r) for r in refs]
    fast = all(b is not None for b in buffers)
    keys: list[Any] = []
    for ref, buf, value in zip(refs, buffers, values, strict=True):
        if not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer):
            keys.append(None)
            continue
        sharding = value.sharding
        if fast:
            target, target_sharding = buf.aval, buf.sharding
            same = value.aval == target
        else:
            target, target_sharding = jax.typeof(ref).inner_aval, ref.sharding
            same = jax.typeof(value) == target
        same = same and (sharding is target_sharding or sharding == target_sharding)
        keys.append((target, target_sharding) if same else None)
    batched, alone = _grouped(keys)
    for chunk in batched:
        if fast:
            copies = _copy_arrays([values[i] for i in chunk])
            for i, copy in zip(chunk, copies, strict=True):
                buffers[i]._replace_with(copy)
        else:
            _write_refs([refs[i] for i in chunk], [values[i] for i in chunk])
    for i in alone:
        refs[i][...] = values[i]
