"""Reads after writes inside one trace: a Variable read after a write in the same trace
gives the value written, with its gradient.

A write into a Variable of a non-differentiable kind (``BatchStat``, ``Cache``,
``OptState``) stores ``jax.lax.stop_gradient`` of the value, since JAX refuses a
differentiated value in a Ref from outside ``jax.grad``. Read back from the Ref, the value
has lost its gradient. Functional code (Equinox's ``state.set`` then ``state.get``) hands
the value itself on, gradient included: a BatchNorm in its ``"ema"`` mode called twice in
one loss (a GAN's discriminator on the real and the fake batch) normalises the second
batch with statistics that depend on the first, and Equinox differentiates through them.

So every write made while a transform traces (``jit``, ``grad``, ``vmap``, a ``scan``
body, ``checkpoint``) is remembered here, per Ref, with the trace that made it; a read
under that same trace returns the value remembered instead of reading the Ref. The Ref is
still written (it holds the final value when the call returns); it is only not read back.

What is remembered is dropped:

- when a write happens under another trace (a nested transform that ran Python: it may
  have written a Ref this trace remembers), and a read under another trace never uses it;
- for one Ref, when JAX flattens the Variable holding it inside a trace (the Variable is
  handed to a nested ``jit``, ``scan``, ``cond`` or ``checkpoint``, which may replay a
  cached trace and write the Ref without running Python).

A nested transform that *closes over* a Variable and replays a cached trace (the same
jitted function called twice inside one outer trace) writes without statetree seeing it:
pass the Variable as an argument instead (docs/concepts.md). Packed trees keep their own
record (:mod:`statetree._views`); this one serves the default form, one Ref per Variable.
"""

import threading
from typing import Any

import jax
import jax.extend.core

from ._bulk import top_level

__all__ = ["forget", "recall", "remember", "pending"]


class _Written(threading.local):
    trace: Any = None
    values: dict[int, tuple[Any, Any]]

    def __init__(self) -> None:
        self.values = {}


_WRITTEN = _Written()


def pending() -> bool:
    """Whether this thread remembers any value (a cheap test before :func:`recall`)."""
    return bool(_WRITTEN.values)


def remember(raw: Any, value: Any) -> None:
    """After ``value`` (with its gradient, before any ``stop_gradient``) was written as
    the whole new value of the ``jax.Ref`` ``raw``: remember it when a transform traces."""
    if not isinstance(raw, jax.Ref) or top_level():
        return
    written = _WRITTEN
    trace = jax.extend.core.get_opaque_trace_state()
    if written.trace != trace:
        written.trace, written.values = trace, {}
    written.values[id(raw)] = (raw, value)


def recall(raw: Any) -> Any:
    """The value last written into ``raw`` under the current trace, or None."""
    written = _WRITTEN
    if not written.values:
        return None
    hit = written.values.get(id(raw))
    if hit is None or hit[0] is not raw:
        return None
    if written.trace != jax.extend.core.get_opaque_trace_state():
        return None
    return hit[1]


def forget(raw: Any) -> None:
    """Drop what is remembered for ``raw`` (JAX is flattening the Variable holding it);
    outside every trace, drop everything (the traces that wrote are over)."""
    written = _WRITTEN
    if not written.values:
        return
    if top_level():
        written.trace, written.values = None, {}
    else:
        written.values.pop(id(raw), None)
