"""Reads after writes inside one trace: a Variable read after a write in the same trace
has the gradient of the value written.

A write into a Variable of a non-differentiable kind (``BatchStat``, ``Cache``,
``OptState``) stores ``jax.lax.stop_gradient`` of the value, since JAX refuses a
differentiated value in a Ref from outside ``jax.grad``. Read back from the Ref, the value
has lost its gradient. Functional code (Equinox's ``state.set`` then ``state.get``) hands
the value itself on, gradient included: a BatchNorm in its ``"ema"`` mode called twice in
one loss (a GAN's discriminator on the real and the fake batch) normalises the second
batch with statistics that depend on the first, and Equinox differentiates through them.

So every such write made while a transform traces (``jit``, ``grad``, ``vmap``, a
``scan`` body, ``checkpoint``) is remembered here, per Ref, with the trace that made it.
A read of that Ref under the same trace still reads the Ref, so its *value* is always the
Ref's, and takes its *tangent* from the value remembered (:func:`_graft`, an identity
with a custom JVP): JAX differentiates it as if the value had been handed on. The Ref
holds the final value when the call returns, as before.

What is remembered is dropped when a write happens under another trace, and is never
used by a read under another trace: a read after a nested transform (the next iteration
of a ``scan``, the code after a ``checkpoint``) gets the Ref's value without the
gradient. For one Ref it is dropped when JAX flattens the Variable holding it inside a
trace (the Variable is handed to a nested ``jit``, ``scan``, ``cond`` or ``checkpoint``,
which may write the Ref from a cached trace without running Python). A nested transform
that *closes over* the Variable and replays a cached trace writes unseen: the value read
afterwards is still the Ref's, and only the gradient would be the earlier write's.
Under ``jax.checking_leaks`` nothing is remembered (a tracer held past its trace is what
that check reports), so reads after writes there get the Ref's value without the
gradient. Packed trees keep their own record (:mod:`statetree._views`); this one serves
the default form, one Ref per Variable.
"""

import threading
from typing import Any

import jax

from ._jax import Tracer, checking_leaks, top_level, trace_state

__all__ = ["forget", "live", "recall", "remember", "remember_all"]


class _Written(threading.local):
    trace: Any = None
    values: dict[int, tuple[Any, Any]]

    def __init__(self) -> None:
        self.values = {}


_WRITTEN = _Written()

# How many threads remember something: hot paths (every Variable JAX flattens, every
# read) test this one module global before looking at their thread's record.
live = 0
_LOCK = threading.Lock()


def _count(change: int) -> None:
    global live
    with _LOCK:
        live += change


def remember(raw: Any, value: Any) -> None:
    """After ``stop_gradient(value)`` was written as the whole new value of the
    ``jax.Ref`` ``raw``: remember ``value`` (with its gradient) when a transform traces."""
    remember_all([(raw, value)])


def remember_all(writes: list[tuple[Any, Any]]) -> None:
    """:func:`remember` for each ``(raw, value)``, in order (the last write wins)."""
    if not writes or top_level():
        return
    written = _WRITTEN
    # Under jax.checking_leaks a tracer kept here past its trace would be reported as
    # leaked: nothing is remembered, and reads after writes get no gradient back.
    keep = not checking_leaks()
    trace = trace_state()
    for raw, value in writes:
        if not isinstance(raw, jax.Ref):
            continue
        if not keep or not isinstance(value, Tracer) or _explicit(value):
            # A constant has no gradient; a value on a mesh with explicit axes has its
            # layout in its type, which the Ref's read need not share: not remembered.
            _drop(written, raw)
            continue
        if not written.values:
            _count(1)
        elif written.trace != trace:
            written.values = {}
        written.trace = trace
        written.values[id(raw)] = (raw, value)


def _explicit(value: Any) -> bool:
    mesh = getattr(jax.typeof(value).sharding, "mesh", None)
    return jax.sharding.AxisType.Explicit in getattr(mesh, "axis_types", ())


def _drop(written: _Written, raw: Any) -> None:
    if written.values.pop(id(raw), None) is not None and not written.values:
        _count(-1)


def recall(raw: Any) -> Any:
    """The value of the Ref ``raw`` (``raw[...]``) with the gradient of the value last
    written into it under the current trace; None when nothing is remembered."""
    written = _WRITTEN
    if not written.values:
        return None
    hit = written.values.get(id(raw))
    if hit is None or hit[0] is not raw:
        return None
    if written.trace != trace_state():
        return None
    return _graft(raw[...], hit[1])


@jax.custom_jvp
def _graft(read: Any, written: Any) -> Any:
    """``read`` (the Ref's value), differentiated as ``written`` (the value written)."""
    return read


@_graft.defjvp
def _graft_jvp(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    return primals[0], tangents[1]


def forget(raw: Any) -> None:
    """Drop what is remembered for ``raw`` (JAX is flattening the Variable holding it);
    outside every trace, drop everything (the traces that wrote are over)."""
    written = _WRITTEN
    if not written.values:
        return
    if top_level():
        written.trace, written.values = None, {}
        _count(-1)
    else:
        _drop(written, raw)
