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

That copy, one fresh array per Ref, is the floor of an eager freeze or update: JAX
donates a Ref's buffer to the next jitted call that writes the Ref, so no snapshot
may share it, and no Ref may share the caller's array. ``benchmarks/bench_scale.py``
times it beside the tree operations. The common case (every buffer and value a plain
``jax.Array``: the ones of a tree made by ``st.mutable``) is checked and grouped in
C-level passes over the lists, not one Python step per Ref.

Only outside every transform: inside ``jax.jit`` a Ref the function closes over is read
and written when the compiled function runs, so there each Ref goes through JAX's own
``ref[...]`` (a copy taken here would be a constant of the trace). Groups smaller than
:data:`MIN_GROUP` go one by one too: a few Refs are not worth a compile.
"""

import importlib
import operator
from collections import deque
from collections.abc import Sequence
from typing import Any

import jax
import jax.core  # jax.core.Tracer below; an explicit import for type checkers
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ARRAY",
    "CHUNK",
    "MIN_GROUP",
    "Types",
    "all_arrays",
    "all_refs",
    "array_types",
    "same_types",
    "buffers",
    "copy_arrays",
    "host_fits",
    "read_refs",
    "write_checked",
    "top_level",
    "write_refs",
]

CHUNK = 256
MIN_GROUP = 16


class _NoArray:  # no object has this type: where JAX moved ArrayImpl, the general path
    def is_deleted(self) -> bool:
        return True


def _array_type() -> Any:
    """The type of a concrete ``jax.Array``: ``type(x) is ARRAY`` is one C comparison,
    where ``isinstance(x, jax.Array)`` goes through JAX's metaclass."""
    try:
        from jax._src.array import ArrayImpl
    except ImportError:  # pragma: no cover - moved in another JAX
        return _NoArray
    return ArrayImpl


ARRAY: Any = _array_type()


try:  # whether no transform is tracing now
    from jax._src.core import trace_ctx as _trace_ctx

    def top_level() -> bool:
        """True outside every JAX transform (no ``jit``, ``grad``, ``vmap`` tracing)."""
        return bool(_trace_ctx.is_top_level())

except ImportError:  # pragma: no cover - private names moved: Ref by Ref

    def top_level() -> bool:
        """True outside every JAX transform; unknown here, so False (Ref by Ref)."""
        return False


# What arrays copied in one call share: type (weak typing included) and sharding. For
# concrete arrays only (type ARRAY): `_sharding` is the attribute behind `sharding`.
_aval_of = operator.attrgetter("aval")
_sharding_of = operator.attrgetter("_sharding")

Types = tuple[list[Any], list[Any]]  # the avals and the shardings of a list of arrays


def array_types(arrays: Sequence[Any]) -> Types:
    """The aval (type, weak typing included) and the sharding of each concrete array."""
    return list(map(_aval_of, arrays)), list(map(_sharding_of, arrays))


def _equal_all(xs: list[Any], ys: list[Any]) -> bool:
    """``xs[i] == ys[i]`` for every ``i``, comparing each distinct pair of objects once
    (a tree's arrays share a few aval and sharding objects; their ``==`` is Python)."""
    if len(xs) != len(ys):
        return False
    ids = zip(map(id, xs), map(id, ys), strict=True)
    pairs = dict(zip(ids, zip(xs, ys, strict=True), strict=True))
    return all(x is y or x == y for x, y in pairs.values())


def same_types(a: Types, b: Types) -> bool:
    """Whether two lists of arrays have, position by position, equal avals and
    shardings (:func:`array_types`)."""
    return _equal_all(a[0], b[0]) and _equal_all(a[1], b[1])


@jax.jit
def _copy_arrays(arrays: list[Any]) -> list[Any]:
    return [jnp.copy(a) for a in arrays]


_copy_one = jax.jit(jnp.copy)  # an array alone: jnp.copy's own Python path costs more


@jax.jit
def _read_refs(refs: list[Any]) -> list[Any]:
    return [r[...] for r in refs]


@jax.jit
def _write_refs(refs: list[Any], values: list[Any]) -> None:
    for r, v in zip(refs, values, strict=True):
        r[...] = v


def _buffer(ref: Any) -> Any:
    """The array a concrete ``jax.Ref`` keeps, or None where JAX keeps it elsewhere."""
    try:
        buf = ref._refs._buf
    except AttributeError:
        return None
    if type(buf) is ARRAY:
        return buf
    return buf if isinstance(buf, jax.Array) and not isinstance(buf, jax.core.Tracer) else None


def buffers(refs: Sequence[Any]) -> list[Any]:
    """:func:`_buffer` of each of ``refs`` (None for those whose buffer JAX keeps
    elsewhere)."""
    return list(map(_buffer, refs))


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
    return _batched(list(groups.values()), alone)


def _batched(groups: list[list[int]], alone: list[int]) -> tuple[list[list[int]], list[int]]:
    """The chunks of each group of at least :data:`MIN_GROUP`; the rest added to
    ``alone``."""
    batched = []
    for members in groups:
        if len(members) < MIN_GROUP:
            alone.extend(members)
        else:
            batched.extend(_chunks(members))
    return batched, alone


def _grouped_by(types: Types) -> tuple[list[list[int]], list[int]]:
    """:func:`_grouped` of arrays by their :func:`array_types`, in C-level passes: the
    objects' ids first (a tree's arrays share a few aval and sharding objects), equal
    objects then merged, and a stable sort of the group numbers."""
    avals, shardings = types
    n = len(avals)
    ids = list(zip(map(id, avals), map(id, shardings), strict=True))
    distinct = dict(zip(ids, zip(avals, shardings, strict=True), strict=True))
    kinds: dict[Any, int] = {}  # equal (aval, sharding) keys of distinct objects: one
    number = {pair: kinds.setdefault(key, len(kinds)) for pair, key in distinct.items()}
    if len(kinds) == 1:
        return _batched([list(range(n))], [])
    codes = np.fromiter(map(number.__getitem__, ids), np.intp, n)
    order = np.argsort(codes, kind="stable").tolist()
    ends = np.cumsum(np.bincount(codes)).tolist()
    groups = [order[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return _batched(groups, [])


def copy_arrays(arrays: Sequence[Any], types: Types | None = None) -> list[Any] | None:
    """Fresh copies of concrete ``jax.Array``s, one jitted call per chunk of arrays of
    one type and sharding; None when some are not plain concrete arrays, or inside a
    transform (the caller then goes its general way). ``types``: their
    :func:`array_types`, when the caller has them."""
    if not arrays or not top_level():
        return None
    if types is None:
        if not all_arrays(arrays):
            return None
        types = array_types(arrays)
    batched, alone = _grouped_by(types)
    out: list[Any] = [None] * len(arrays)
    for chunk in batched:
        copies = _copy_arrays([arrays[i] for i in chunk])
        for i, copy in zip(chunk, copies, strict=True):
            out[i] = copy
    for i in alone:
        out[i] = _copy_one(arrays[i])
    return out


_JUST_ARRAYS = {ARRAY}  # the set of types of a list of concrete jax.Arrays
_JUST_REFS = {jax.Ref}  # ... of concrete jax.Refs (tracers of Refs and views differ)


def all_arrays(xs: Sequence[Any]) -> bool:
    """Whether ``xs`` is non-empty and every item a concrete ``jax.Array`` (not a tracer,
    a PRNG key array or a subclass): one C-level pass."""
    return set(map(type, xs)) == _JUST_ARRAYS


def all_refs(xs: Sequence[Any]) -> bool:
    """Whether ``xs`` is non-empty and every item a concrete ``jax.Ref``: one C-level
    pass."""
    return set(map(type, xs)) == _JUST_REFS


def _is_none(x: Any) -> bool:
    return x is None


def read_refs(refs: Sequence[Any]) -> list[Any]:
    """The current value of each concrete ``jax.Ref`` in ``refs``, as fresh arrays that
    later writes into the Refs do not reach."""
    if not top_level():  # inside a transform: JAX reads each when the function runs
        return [r[...] for r in refs]
    buffers = list(map(_buffer, refs))
    fast = not any(map(_is_none, buffers))
    if fast:
        copies = copy_arrays(buffers)
        if copies is not None:
            return copies
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


def _replaceable(ref: Any) -> Any:
    """The buffer of ``ref`` if it can take a new array in place, else None."""
    buf = _buffer(ref)
    return buf if buf is not None and hasattr(buf, "_replace_with") else None


def _key(array: Any) -> Any:
    """What arrays (or Refs) read in one call share: type (weak typing included) and
    sharding."""
    aval = array.aval
    return (getattr(aval, "inner_aval", aval), array.sharding)


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


def _write_fast(buffers: list[Any], values: Sequence[Any], types: Types | None = None) -> bool:
    """The common case of :func:`write_refs`, carried out: every value a concrete array
    of its Ref's type and sharding (known when the caller gives their ``types``).
    False (nothing written) when that is not the case."""
    if types is None:
        if not (all_arrays(buffers) and all_arrays(values)):
            return False
        types = array_types(values)
        if not same_types(types, array_types(buffers)):
            return False
    copies = copy_arrays(values, types)
    if copies is None:
        return False
    deque(map(ARRAY._replace_with, buffers, copies), maxlen=0)  # in order: last one wins
    return True


def host_fits(values: Sequence[Any], types: Types) -> bool:
    """Whether NumPy arrays ``values`` can be written by :func:`write_checked` into
    Refs whose buffers have ``types``: each of its buffer's shape and dtype, no buffer
    weakly typed (a NumPy array is not), every buffer on one device."""
    avals, shardings = types
    if list(map(_shape_of, values)) != list(map(_shape_of, avals)):
        return False
    if list(map(_dtype_of, values)) != list(map(_dtype_of, avals)):
        return False
    distinct_avals = dict(zip(map(id, avals), avals, strict=True)).values()
    distinct_shardings = dict(zip(map(id, shardings), shardings, strict=True)).values()
    return not any(a.weak_type for a in distinct_avals) and all(
        s.num_devices == 1 for s in distinct_shardings
    )


_shape_of = operator.attrgetter("shape")
_dtype_of = operator.attrgetter("dtype")


try:  # JAX's own one-array transfer (what `jax.device_put` ends in), without its
    # per-array Python work (tens of microseconds)
    _device_put_one: Any = importlib.import_module("jax._src.lib.xla_client").batched_device_put
except (ImportError, AttributeError):  # pragma: no cover - moved: the general path
    _device_put_one = None


def _write_host(buffers: list[Any], values: Sequence[Any], types: Types) -> bool:
    """Write NumPy ``values`` (:func:`host_fits` holds) into the Ref buffers, each by
    one transfer to its buffer's device that copies (never aliases the caller's NumPy
    memory, which a later in-place step would write into). False, nothing written,
    where JAX lacks that transfer."""
    if _device_put_one is None:
        return False
    avals, shardings = types
    devices = {id(s): next(iter(s.device_set)) for s in shardings}
    for buf, value, aval, sharding in zip(buffers, values, avals, shardings, strict=True):
        device = devices[id(sharding)]
        buf._replace_with(_device_put_one(aval, sharding, [value], [device], True, True))
    return True


def write_checked(
    refs: Sequence[Any], values: Sequence[Any], types: Types, refs_buffers: list[Any]
) -> None:
    """:func:`write_refs` for pairs already known to take its common case (the write
    plan checked them: see ``statetree._plan._accepted``), without checking again:
    ``types`` (:func:`array_types`) are those of the Refs' buffers, and each value is a
    concrete array of its buffer's type, or a NumPy array of its shape and dtype
    (:func:`host_fits`: what a checkpoint restore writes); ``refs_buffers`` are the
    buffers (:func:`buffers`). The last write to a Ref wins."""
    if values and type(values[0]) is np.ndarray:
        if top_level() and _write_host(refs_buffers, values, types):
            return
    elif _write_fast(refs_buffers, values, types):
        return
    write_refs(refs, values)


def write_refs(refs: Sequence[Any], values: Sequence[Any]) -> None:
    """``ref[...] = value`` for each pair; the values already have their Ref's shape
    and dtype. Values that are not concrete arrays of their Ref's type (weak typing
    included) and sharding go one by one."""
    if not top_level():  # inside a transform: JAX writes each when the function runs
        for ref, value in zip(refs, values, strict=True):
            ref[...] = value
        return
    buffers = list(map(_replaceable, refs))
    if _write_fast(buffers, values):
        return
    values = _on_device(refs, values)
    fast = not any(map(_is_none, buffers))
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
