"""The one door to JAX's internals: every private or semi-private JAX detail statetree uses.

statetree supports a range of JAX releases (README, "Install"), and JAX changes its
internals between them without notice. So no other module of statetree touches
``jax._src``, a private attribute, or JAX's error text: each such use lives here, as one
function or constant per purpose, with

- what it is for,
- the public spelling it replaces (the slower or weaker way JAX offers),
- what happens when a JAX release changes it: the change is detected (at import, or
  on first use where a check needs a device) and the public spelling is used instead.
  The result is then slower, never wrong, never a crash, and never a half-applied
  write: the write door (:func:`replace_all`) checks every pair before the first lands.

``tests/test_jax.py`` checks each detection and fallback on the JAX under test.
"""

import functools
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.core
import jax.extend.core
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AD_TRACERS",
    "ARRAY",
    "all_equal",
    "Tracer",
    "buffer",
    "checking_leaks",
    "coordination_client",
    "escaped",
    "is_tracer",
    "replace_all",
    "replace_works",
    "shardings",
    "to_weak",
    "top_level",
    "trace_state",
]


# ------------------------------------------------------------------------------ types
# Tracer: public (`jax.core.Tracer`), listed here because `jax.core` is being emptied
# release by release. Where it goes, JAX's private class of the same name is used.
def _tracer_type() -> type:
    public = getattr(jax.core, "Tracer", None)
    if isinstance(public, type):
        return public
    from jax._src.core import Tracer as private  # pragma: no cover - another JAX

    return private  # pragma: no cover


Tracer: type = _tracer_type()


def is_tracer(x: Any) -> bool:
    """Whether ``x`` is a tracer: a value with no concrete data here (inside a transform,
    or escaped from one)."""
    return isinstance(x, Tracer)


class _NoArray:  # no object has this type: where JAX moved ArrayImpl, the general path
    def is_deleted(self) -> bool:
        return True

    def _replace_with(self, other: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError


def _array_type() -> Any:
    try:
        from jax._src.array import ArrayImpl
    except ImportError:  # pragma: no cover - moved in another JAX
        return _NoArray
    if isinstance(ArrayImpl, type) and issubclass(ArrayImpl, jax.Array):
        return ArrayImpl
    return _NoArray  # pragma: no cover - changed in another JAX


# ARRAY: the type of a concrete ``jax.Array`` (``jax._src.array.ArrayImpl``), so that
# ``type(x) is ARRAY`` (one C comparison) replaces ``isinstance(x, jax.Array) and not
# is_tracer(x)`` (JAX's metaclass, per item). Public spelling: that isinstance. Where
# JAX moves it, ARRAY is a type no object has: every "all concrete arrays?" check then
# says no, and callers take their general (public) path.
ARRAY: Any = _array_type()


# AD_TRACERS: the tracer types JAX hands a differentiated function
# (``jax._src.interpreters.ad.JVPTracer``, ``LinearizeTracer``): a Ref among them
# means a mutable Variable was given to ``jax.grad`` & co. No public spelling. Where
# they move: an empty tuple, and JAX's own error (less specific) is what users see.
def _ad_tracers() -> tuple[type, ...]:
    try:
        from jax._src.interpreters import ad
    except ImportError:  # pragma: no cover - moved in another JAX
        return ()
    found = tuple(getattr(ad, name, None) for name in ("JVPTracer", "LinearizeTracer"))
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, Tracer))


AD_TRACERS: tuple[type, ...] = _ad_tracers()


# -------------------------------------------------------------------- am I tracing?
# The one way statetree asks. Private: ``jax._src.core.trace_ctx.is_top_level()`` (one
# attribute read). Public spelling: the opaque trace state
# (``jax.extend.core.get_opaque_trace_state``) compared with the one seen at import
# (statetree is normally imported outside every transform). Checked at import: where
# the private one is missing, gives no bool, or disagrees with the public one, the
# public one answers.
_TOP_STATE = jax.extend.core.get_opaque_trace_state()


def _top_level_public() -> bool:
    return bool(jax.extend.core.get_opaque_trace_state() == _TOP_STATE)


def _top_level_private() -> Any:
    try:
        from jax._src.core import trace_ctx
    except ImportError:  # pragma: no cover - moved in another JAX
        return None
    check = getattr(trace_ctx, "is_top_level", None)
    try:
        answer = check() if callable(check) else None
    except Exception:  # pragma: no cover - changed in another JAX
        return None
    if not isinstance(answer, bool):
        return None  # pragma: no cover - changed in another JAX
    if answer and not _top_level_public():
        return None  # pragma: no cover - the two disagree: the public one answers
    return check


_is_top_level = _top_level_private() or _top_level_public


def top_level() -> bool:
    """True outside every JAX transform (no ``jit``, ``grad``, ``vmap``, ``scan`` is
    tracing now): concrete ``jax.Ref``s are then read and written eagerly."""
    return bool(_is_top_level())


def trace_state() -> Any:
    """An object equal to another taken under the same trace and to no other
    (``jax.extend.core.get_opaque_trace_state``, semi-public: ``jax.extend`` may change
    with any release). Where it is gone, a fresh object: equal to nothing else, so a
    caller that remembers per trace remembers nothing (slower, still right)."""
    get = getattr(jax.extend.core, "get_opaque_trace_state", None)
    return object() if get is None else get()


def escaped(tracer: Any) -> bool:
    """Whether ``tracer`` outlived the transform that made it (stored on an object during
    tracing and used later). Private: the tracer's ``_trace.is_valid()``. Public
    spelling: any tracer seen outside every transform has escaped (:func:`top_level`);
    where the private attribute is gone, only that is checked (an escaped tracer used
    inside another transform is then left to JAX's own error)."""
    if top_level():
        return True
    trace = getattr(tracer, "_trace", None)
    is_valid = getattr(trace, "is_valid", None)
    if is_valid is None:  # pragma: no cover - changed in another JAX
        return False
    try:
        return not is_valid()
    except Exception:  # pragma: no cover - changed in another JAX
        return False


# ------------------------------------------------------------- the buffer of a Ref
def buffer(ref: Any) -> Any:
    """The array a concrete ``jax.Ref`` keeps (JAX's ``ref._refs._buf``), read only,
    never assigned; None where JAX keeps it elsewhere or it is not a concrete array.
    Public spelling: ``ref[...]`` (one dispatch per Ref). Callers with None take the
    public path: one jitted read or write per chunk of Refs."""
    try:
        buf = ref._refs._buf
    except AttributeError:
        return None
    if type(buf) is ARRAY:
        return buf
    return buf if isinstance(buf, jax.Array) and not isinstance(buf, Tracer) else None


# ----------------------------------------------------------------- the write door
# Private: ``ArrayImpl._replace_with(new)`` gives a Ref's buffer the device memory of
# ``new`` in place (what JAX itself does with the output of a jitted call that wrote a
# Ref: ``jax/_src/interpreters/pxla.py``). Public spelling: a jitted function that
# writes ``ref[...] = value`` for a chunk of Refs. JAX refuses a replacement that differs
# in shape, dtype, weak type or sharding, and since 0.11.2 in committed-ness (and
# ``jax.new_ref`` now commits its buffer): every pair is checked here before the first
# lands. Checked on first use: a probe Ref is replaced and read back through the public
# ``ref[...]``; where that fails, :func:`replace_all` writes nothing and callers take
# the public path.
_committed = operator.attrgetter("committed")
_aval = operator.attrgetter("aval")


@functools.cache
def _sharding_getter() -> Any:
    """``_sharding``, the attribute behind a concrete array's public ``sharding``
    property (36 ns a read instead of 470), where it still is that; else ``sharding``.
    Checked on first use, on a fresh array."""
    x = jnp.zeros((1,))
    if getattr(x, "_sharding", None) is x.sharding:
        return operator.attrgetter("_sharding")
    return operator.attrgetter("sharding")  # pragma: no cover - changed in another JAX


def shardings(arrays: Sequence[Any]) -> list[Any]:
    """The sharding of each concrete array in ``arrays`` (public spelling:
    ``x.sharding``, a Python property)."""
    return list(map(_sharding_getter(), arrays))


@functools.cache
def _replace_probe() -> tuple[bool, bool]:
    """``(works, committed_checked)``: whether ``_replace_with`` replaces a Ref's buffer
    as described, and whether JAX refuses a replacement of other committed-ness."""
    try:
        ref = jax.new_ref(jnp.zeros((2,), jnp.float32))
        buf = buffer(ref)
        if buf is None or not hasattr(buf, "_replace_with"):
            return False, False
        new = jax.jit(jnp.copy, out_shardings=buf.sharding)(jnp.ones((2,), jnp.float32))
        if not buf.committed:
            new = jax.jit(jnp.copy)(jnp.ones((2,), jnp.float32))
        buf._replace_with(new)
        if not bool((ref[...] == 1).all()) or buffer(ref) is not buf:
            return False, False
        other = jnp.full((2,), 2.0, jnp.float32)  # uncommitted
        if buf.committed == other.committed:  # pragma: no cover - JAX commits nothing
            other = jax.device_put(other, buf.sharding)
        try:
            buf._replace_with(other)
        except Exception:
            return True, True  # refused for its committed-ness alone: JAX checks it
        return True, False
    except Exception:  # pragma: no cover - changed in another JAX
        return False, False


def replace_works() -> tuple[bool, bool]:
    """``(works, committed_checked)`` from the first-use check of ``_replace_with``:
    whether the fast write is available, and whether a copy must match its buffer's
    committed-ness (JAX >= 0.11.2) beyond its aval and sharding."""
    return _replace_probe()


def _replace_one(buf: Any, new: Any) -> None:
    buf._replace_with(new)


def replace_all(buffers: Sequence[Any], arrays: Sequence[Any], types: Any = None) -> int:
    """Give each Ref buffer in ``buffers`` the device memory of the fresh array at the
    same position (in order: the last of repeated buffers wins). ``types``: the
    buffers' ``(avals, shardings)`` when the caller has them.

    Returns how many landed: 0 when any pair differs where JAX requires a match (aval,
    weak type included; sharding; committed-ness where this JAX checks it) or the
    replacement does not work on this JAX: nothing is written and the caller takes the
    public path. Fewer than ``len(buffers)`` only if JAX refused a pair these checks
    passed: the caller then writes the rest through the public path."""
    if not _replace_probe()[0] or not _pairs_fit(buffers, arrays, types):
        return 0
    done = 0
    try:
        for buf, new in zip(buffers, arrays, strict=True):
            _replace_one(buf, new)
            done += 1
    except Exception:
        return done
    return done


def _pairs_fit(buffers: Sequence[Any], arrays: Sequence[Any], types: Any) -> bool:
    """Whether JAX takes every replacement of :func:`replace_all`: each a concrete array
    of its buffer's aval (weak type included) and sharding, and of its committed-ness
    where this JAX checks it. Checked for every pair before the first lands."""
    if len(buffers) != len(arrays):
        return False
    if set(map(type, arrays)) != {ARRAY} or set(map(type, buffers)) != {ARRAY}:
        return False
    avals, shards = types if types is not None else (list(map(_aval, buffers)), shardings(buffers))
    if not all_equal(avals, list(map(_aval, arrays))):
        return False
    if not all_equal(shards, shardings(arrays)):
        return False
    committed_checked = _replace_probe()[1]
    return not committed_checked or list(map(_committed, buffers)) == list(map(_committed, arrays))


def all_equal(xs: list[Any], ys: list[Any]) -> bool:
    """``xs[i] == ys[i]`` for every ``i``, comparing each distinct pair of objects once
    (a tree's arrays share a few aval and sharding objects; their ``==`` is Python)."""
    ids = zip(map(id, xs), map(id, ys), strict=True)
    pairs = dict(zip(ids, zip(xs, ys, strict=True), strict=True))
    return all(x is y or x == y for x, y in pairs.values())


# -------------------------------------------------------------------- multi-process
# The coordination service's key-value store, which checkpoint calls use to meet with a
# bounded wait and to name the process that did not come (statetree._checkpoint's
# _processes). Public spelling: none; `jax.experimental.multihost_utils`'s barriers
# block until JAX's heartbeat gives up and name no process. Where JAX moves or renames
# its client, None is returned: callers then meet through JAX's public collectives
# (unbounded, unnamed waits), never fail.
def coordination_client() -> Any:
    """The job's ``jax.distributed`` coordination client, or None (outside
    ``jax.distributed``, or where this JAX keeps it elsewhere)."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - moved in another JAX
        return None
    state = getattr(distributed, "global_state", None)
    return getattr(state, "client", None)


# ------------------------------------------------------------------------ weak types
# Marking an array weakly typed: private ``jax._src.lax.lax._convert_element_type(x,
# weak_type=True)``. Public spelling: none (``jax.lax.convert_element_type`` always makes
# it strong). statetree._weak uses it to give a weakly typed Variable weakly typed reads
# where its Ref lost the weak type (``jax.new_ref`` strips it from JAX 0.11.2). Checked
# at import on a NumPy scalar; where JAX moved or changed it, None: reads of such
# Variables stay strongly typed (a raw Ref's behaviour on those versions), never an error.
def _find_to_weak() -> Any:
    try:
        from jax._src.lax.lax import _convert_element_type

        if jax.typeof(_convert_element_type(np.float32(1.0), weak_type=True)).weak_type:
            return lambda x: _convert_element_type(x, weak_type=True)
    except Exception:  # pragma: no cover - another JAX
        pass
    return None  # pragma: no cover - another JAX


to_weak: Any = _find_to_weak()


# ---------------------------------------------------------------------- leak checks
def checking_leaks() -> bool:
    """Whether ``jax.checking_leaks`` (the ``jax_check_tracer_leaks`` flag) is on here:
    JAX then reports every tracer alive after its trace as leaked, so statetree's records
    of values written in a trace (statetree._recall, statetree._views) keep nothing.
    Public (a documented config flag); read through ``getattr`` because the flag's
    attribute is made at run time, and False where a JAX drops it."""
    return bool(getattr(jax.config, "jax_check_tracer_leaks", False))
