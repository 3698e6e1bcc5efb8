"""Eager reads and writes of many concrete ``jax.Ref``s at once: grouped by type and
sharding, one jitted copy per chunk of up to :data:`CHUNK` (power-of-two sizes, so a
group compiles a handful of functions), then handed to the Refs through the JAX door
(:func:`statetree._jax.replace_all`). Why, the floor it meets, and the fast-path
contract: README.md beside this file ("The bulk layer", "The fast-path contract").

Only outside every transform: inside ``jax.jit`` each Ref goes through JAX's own
``ref[...]`` (a copy taken here would be a constant of the trace). Groups smaller than
:data:`MIN_GROUP` go one by one: a few Refs are not worth a compile.
"""

import functools
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jax
from .._jax import ARRAY, top_level

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


# What arrays copied in one call share: type (weak typing included) and sharding.
_aval_of = operator.attrgetter("aval")

Types = tuple[list[Any], list[Any]]  # the avals and the shardings of a list of arrays


def array_types(arrays: Sequence[Any]) -> Types:
    """The aval (type, weak typing included) and the sharding of each concrete array."""
    return list(map(_aval_of, arrays)), _jax.shardings(arrays)


def same_types(a: Types, b: Types) -> bool:
    """Whether two lists of arrays have, position by position, equal avals and
    shardings (:func:`array_types`)."""
    return _jax.all_equal(a[0], b[0]) and _jax.all_equal(a[1], b[1])


@jax.jit
def _copy_arrays(arrays: list[Any]) -> list[Any]:
    return [jnp.copy(a) for a in arrays]


_copy_one = jax.jit(jnp.copy)  # an array alone: jnp.copy's own Python path costs more


@functools.cache
def _copy_to(sharding: Any) -> Any:
    """:func:`_copy_arrays` whose copies are committed to ``sharding``: what a Ref's
    committed buffer takes (``jax.new_ref`` commits from JAX 0.11.2)."""
    return jax.jit(lambda arrays: [jnp.copy(a) for a in arrays], out_shardings=sharding)


@functools.cache
def _copy_one_to(sharding: Any) -> Any:
    """:data:`_copy_one`, committed to ``sharding``."""
    return jax.jit(jnp.copy, out_shardings=sharding)


@jax.jit
def _read_refs(refs: list[Any]) -> list[Any]:
    return [r[...] for r in refs]


@jax.jit
def _write_refs(refs: list[Any], values: list[Any]) -> None:
    for r, v in zip(refs, values, strict=True):
        r[...] = v


def buffers(refs: Sequence[Any]) -> list[Any]:
    """The array each of ``refs`` keeps (:func:`statetree._jax.buffer`; None for those
    whose buffer JAX keeps elsewhere)."""
    return list(map(_jax.buffer, refs))


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


def _grouped_by(
    types: Types, flags: list[bool] | None = None
) -> tuple[list[list[int]], list[int]]:
    """:func:`_grouped` of arrays by their :func:`array_types` (and ``flags``, when
    given), in C-level passes: the objects' ids first (a tree's arrays share a few aval
    and sharding objects), equal objects then merged, and a stable sort of the group
    numbers."""
    avals, shardings = types
    n = len(avals)
    if flags is None:
        ids = list(zip(map(id, avals), map(id, shardings), strict=True))
        distinct = dict(zip(ids, zip(avals, shardings, strict=True), strict=True))
    else:
        ids = list(zip(map(id, avals), map(id, shardings), flags, strict=True))
        distinct = dict(zip(ids, zip(avals, shardings, flags, strict=True), strict=True))
    kinds: dict[Any, int] = {}  # equal (aval, sharding) keys of distinct objects: one
    number = {pair: kinds.setdefault(key, len(kinds)) for pair, key in distinct.items()}
    if len(kinds) == 1:
        return _batched([list(range(n))], [])
    codes = np.fromiter(map(number.__getitem__, ids), np.intp, n)
    order = np.argsort(codes, kind="stable").tolist()
    ends = np.cumsum(np.bincount(codes)).tolist()
    groups = [order[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    return _batched(groups, [])


def copy_arrays(
    arrays: Sequence[Any], types: Types | None = None, commit: list[bool] | None = None
) -> list[Any] | None:
    """Fresh copies of concrete ``jax.Array``s, one jitted call per chunk of arrays of
    one type and sharding; None when some are not plain concrete arrays, or inside a
    transform (the caller then goes its general way). ``types``: their
    :func:`array_types`, when the caller has them. ``commit[i]``: the copy of
    ``arrays[i]`` is committed to its sharding (what a committed Ref buffer requires);
    without it, copies are committed where their array is (JAX's rule for outputs)."""
    if not arrays or not top_level():
        return None
    if types is None:
        if not all_arrays(arrays):
            return None
        types = array_types(arrays)
    flags = None if commit is None or len(set(commit)) == 1 else commit
    batched, alone = _grouped_by(types, flags)
    out: list[Any] = [None] * len(arrays)
    for chunk in batched:
        if commit is not None and commit[chunk[0]]:
            copies = _copy_to(types[1][chunk[0]])([arrays[i] for i in chunk])
        else:
            copies = _copy_arrays([arrays[i] for i in chunk])
        for i, copy in zip(chunk, copies, strict=True):
            out[i] = copy
    for i in alone:
        if commit is not None and commit[i]:
            out[i] = _copy_one_to(types[1][i])(arrays[i])
        else:
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
    buffers = list(map(_jax.buffer, refs))
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


_committed = operator.attrgetter("committed")


def _write_fast(
    refs: Sequence[Any], buffers: list[Any], values: Sequence[Any], types: Types | None = None
) -> bool:
    """The common case of :func:`write_refs`, carried out: every value a concrete array
    of its Ref's type and sharding (known when the caller gives their ``types``): one
    copy per chunk, each copy matching its buffer exactly (committed-ness included),
    then :func:`statetree._jax.replace_all`, which checks every pair before the first
    lands. False, nothing written, when that is not the case."""
    if types is None:
        if not (all_arrays(buffers) and all_arrays(values)):
            return False
        types = array_types(values)
        if not same_types(types, array_types(buffers)):
            return False
    # Copies match their buffer's committed-ness where JAX checks it (from 0.11.2).
    commit = list(map(_committed, buffers)) if _jax.replace_works()[1] else None
    copies = copy_arrays(values, types, commit)
    return copies is not None and _land(refs, buffers, copies, types)


def _land(refs: Sequence[Any], buffers: list[Any], arrays: list[Any], types: Types) -> bool:
    """Hand fresh ``arrays`` to the Ref buffers (:func:`statetree._jax.replace_all`).
    False, nothing written, when the door refuses them. Should JAX refuse a pair the
    door's checks passed, the rest are written through ``ref[...] =``: the write
    completes rather than stopping half-applied."""
    done = _jax.replace_all(buffers, arrays, types)
    if done == 0:
        return False
    for ref, array in zip(refs[done:], arrays[done:], strict=True):
        ref[...] = array
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


def _write_host(
    refs: Sequence[Any], buffers: list[Any], values: Sequence[Any], types: Types
) -> bool:
    """Write NumPy ``values`` (:func:`host_fits` holds) into the Ref buffers: fresh NumPy
    copies (a CPU device may alias host memory, even with ``may_alias=False`` on JAX
    0.10.2, and the caller's arrays must stay theirs), one batched ``jax.device_put``
    onto the buffers' shardings, then :func:`_land`. False, nothing written, where the
    door refuses."""
    fresh = [np.array(v, copy=True) for v in values]
    placed = jax.device_put(fresh, types[1], may_alias=False)
    return _land(refs, buffers, placed, types)


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
        if top_level() and _write_host(refs, refs_buffers, values, types):
            return
    elif _write_fast(refs, refs_buffers, values, types):
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
    buffers = list(map(_jax.buffer, refs))
    if _write_fast(refs, buffers, values):
        return
    values = _on_device(refs, values)
    keys: list[Any] = []
    for ref, value in zip(refs, values, strict=True):
        if not isinstance(value, jax.Array) or _jax.is_tracer(value):
            keys.append(None)
            continue
        target, target_sharding = jax.typeof(ref).inner_aval, ref.sharding
        same = jax.typeof(value) == target
        same = same and (value.sharding == target_sharding)
        keys.append((target, target_sharding) if same else None)
    batched, alone = _grouped(keys)
    for chunk in batched:  # JAX's own write: one jitted call per chunk of Refs
        _write_refs([refs[i] for i in chunk], [values[i] for i in chunk])
    for i in alone:
        refs[i][...] = values[i]
