"""Views: a Variable's slot in a packed buffer, and how writes into many slots land.

A :class:`View` follows the ``jax.Ref`` protocol (``view[...]`` reads, ``view[...] = x``
writes) for one array inside a buffer that :mod:`statetree._packed` built: a slice of a
flat buffer of raw bits, a row of a stacked buffer, or a whole buffer of its own.
Registered as a storage with a batch writer, so ``st.update`` and ``Optimizer.update``
write a buffer once rather than once per Variable.
"""

import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _jax
from ._errors import StructureError
from ._write import storage as _storage

__all__ = ["View", "Where"]

# Where a view sits in its buffer: (start, stop) of a flat buffer, a row of a stacked
# buffer, or None for a buffer of its own.
Where = tuple[int, int] | int | None


class View:
    """One Variable's part of a packed buffer, following the ``jax.Ref`` protocol:
    ``view[...]`` reads it, ``view[...] = x`` writes it (``x`` already of its shape and
    dtype, as Variables ensure). Outside jit the buffer is a ``jax.Ref``; inside, its
    tracer. A flat buffer holds the raw bits of every dtype of one width (float32 and
    int32 share a uint32 buffer): reads and writes bitcast, which costs nothing."""

    __slots__ = ("buffer", "dtype", "shape", "sharding", "where")

    def __init__(
        self, buffer: Any, where: Where, shape: tuple[int, ...], dtype: Any, sharding: Any
    ) -> None:
        self.buffer = buffer
        self.where = where
        self.shape = shape
        self.dtype = dtype
        self.sharding = sharding

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_traced(self) -> bool:
        return _jax.is_tracer(self.buffer)

    def __getitem__(self, idx: Any) -> Any:
        value = _recall(self)
        if value is None:
            value = self._read()
        return value if idx is Ellipsis else value[idx]

    def _read(self) -> Any:
        """The slot's value, read from the buffer."""
        where = self.where
        if where is None:
            value = self.buffer[...]
        elif isinstance(where, tuple):
            if not self.is_traced and where[1] < _INT32:
                # Eagerly: one compiled call (per size, dtype and shape, the start an
                # argument) instead of a slice, a bitcast and a reshape dispatched one by
                # one, each compiled per slot.
                reader = _slot_reader(where[1] - where[0], np.dtype(self.dtype), self.shape)
                return reader(self.buffer[...], where[0])
            value = jax.lax.slice(_snapshot(self.buffer), (where[0],), (where[1],))
            if value.dtype != self.dtype:
                value = jax.lax.bitcast_convert_type(value, self.dtype)
            value = value.reshape(self.shape)
        else:  # a row of a stacked buffer (sharded refs take slices, not integers)
            value = self.buffer[where : where + 1].reshape(self.shape)
        return value

    def __setitem__(self, idx: Any, value: Any) -> None:
        if idx is not Ellipsis:
            value = self[...].at[idx].set(value)
        where = self.where
        if where is None:
            self.buffer[...] = value
        elif isinstance(where, tuple):
            if where[0] < where[1]:  # nothing to write into an empty slot
                self.buffer[where[0] : where[1]] = self._bits(value)
        else:
            self.buffer[where : where + 1] = _like_buffer(self.buffer, jnp.expand_dims(value, 0))
        _remember(self, value)

    def _bits(self, value: Any) -> Any:
        """``value`` as a slice of a flat buffer: raveled, bitcast to the buffer dtype."""
        flat = jnp.ravel(value)
        dtype = self.buffer.dtype
        bits = flat if flat.dtype == dtype else jax.lax.bitcast_convert_type(flat, dtype)
        return _like_buffer(self.buffer, bits)

    def __repr__(self) -> str:
        return f"View({self.dtype}[{','.join(map(str, self.shape))}] at {self.where!r})"


_INT32 = 2**31


@functools.lru_cache(maxsize=1024)
def _slot_reader(size: int, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """A jitted read of ``size`` elements of a flat buffer from a start given as an
    argument, as an array of ``dtype`` and ``shape`` (see ``View._read``)."""

    def read(buffer: Any, start: Any) -> Any:
        value = jax.lax.dynamic_slice(buffer, (start,), (size,))
        if value.dtype != dtype:
            value = jax.lax.bitcast_convert_type(value, dtype)
        return value.reshape(shape)

    return jax.jit(read)


def _explicit(buffer: Any) -> bool:
    """Whether ``buffer`` lives on a mesh with explicit axes (its layout is its type)."""
    mesh = getattr(jax.typeof(buffer).sharding, "mesh", None)
    return jax.sharding.AxisType.Explicit in getattr(mesh, "axis_types", ())


def _like_buffer(buffer: Any, value: Any) -> Any:
    """``value`` laid out as ``buffer`` is, when the buffer lives on a mesh with explicit
    axes: JAX then requires a part written into it to match its layout, and an array
    made outside ``jax.set_mesh`` has no layout on that mesh."""
    if not _explicit(buffer):
        return value
    sharding = jax.typeof(buffer).sharding
    if _jax.is_tracer(buffer):
        return jax.sharding.reshard(value, sharding)
    return jax.device_put(value, buffer.sharding)


# ------------------------------------------------------------------ reads after writes
# Inside a trace, a read of a slot written earlier in the same trace returns the value
# written, not a slice of the buffer. Both are the same number, but a slice of the buffer
# after a write depends on that write: XLA then keeps a copy of the whole buffer alive
# across every later slot write (a step that writes and reads back each of 300 small
# Variables ran 4x slower than with the value reused; see docs/performance.md). For the
# same reason a slot not written yet is sliced from one read of the whole buffer per
# trace (``_snapshot``), never from the buffer as later writes left it. What is
# remembered: the last trace that read or wrote through a View (on this thread), per
# flat buffer its value when first read, and per slot (buffer, place) the value
# written. Everything is forgotten on a read or write under any other
# trace (a nested jit, a scan body, a grad: it may have changed a slot this trace
# remembers) and whenever JAX flattens a packed tree (handing it to a nested transform,
# which may replay a cached trace without running Python). Writes that bypass the Views
# (into ``packed.buffers`` directly) are not seen; statetree never makes them.


class _Written(threading.local):
    trace: Any = None
    values: dict[tuple[int, Where], tuple[Any, Any]]
    snapshots: dict[int, tuple[Any, Any]]

    def __init__(self) -> None:
        self.values = {}
        self.snapshots = {}

    def enter(self, trace: Any) -> None:
        """Start remembering for ``trace``, forgetting what another trace left."""
        if self.trace != trace:
            self.trace, self.values, self.snapshots = trace, {}, {}


_WRITTEN = _Written()


def _remember(view: View, value: Any) -> None:
    """After a whole-slot write of ``value`` into ``view``: remember it if traced (and
    not on a mesh with explicit axes, where a read from the buffer has the buffer's
    layout as its type, which the value written need not have)."""
    if not _jax.is_tracer(view.buffer) or _explicit(view.buffer) or _jax.checking_leaks():
        return  # under jax.checking_leaks a tracer kept past its trace is a reported leak
    written = _WRITTEN
    written.enter(_jax.trace_state())
    written.values[(id(view.buffer), view.where)] = (view.buffer, value)


def _recall(view: View) -> Any:
    """The value last written into ``view``'s slot in the current trace, or None."""
    written = _WRITTEN
    if not written.values:
        return None
    hit = written.values.get((id(view.buffer), view.where))
    if hit is None or hit[0] is not view.buffer:
        return None
    if written.trace != _jax.trace_state():
        return None
    return hit[1]


def _snapshot(buffer: Any) -> Any:
    """The whole value of a traced flat ``buffer``, read once per trace: every read of a
    slot not written in this trace slices it (a slot written is recalled instead, so the
    numbers are current). Slicing the buffer as it stands after earlier slot writes
    instead makes each later slot write depend on the previous one's read, and XLA's
    CPU backend then runs every such write as a pass over the whole buffer: a step
    writing each of 1,000 slots without reading them back ran 20x slower (see the W5
    benchmark's raw-JAX rows). On a mesh with explicit axes, nothing is remembered."""
    if _explicit(buffer) or _jax.checking_leaks():
        return buffer[...]
    written = _WRITTEN
    written.enter(_jax.trace_state())
    hit = written.snapshots.get(id(buffer))
    if hit is not None and hit[0] is buffer:
        return hit[1]
    value = buffer[...]
    written.snapshots[id(buffer)] = (buffer, value)
    return value


def forget() -> None:
    """Drop every remembered value: called whenever JAX flattens a packed tree. Inside a
    trace that means the tree is handed to a nested jit, scan, cond or checkpoint, whose
    writes (from a cached trace, run without Python) this module would not see; outside
    any trace it releases the tracers of a finished trace."""
    written = _WRITTEN
    if written.values or written.snapshots:
        written.trace, written.values, written.snapshots = None, {}, {}


# Slots of at most this many elements on average are "small" (16 KiB of float32).
_SMALL = 1 << 12


def _write_views(pairs: list[tuple[View, Any]]) -> None:
    """Many whole-value writes into views (``_storage.write_all``), grouped by buffer.

    A flat buffer of which at least half is written, in small slots, takes *one* write
    of its whole new value (the written slots and, between them, its current contents):
    XLA runs that as one kernel, where a write per view is a kernel per view, which
    dominates the step of a model of many small Variables. Large slots go one by one:
    there the kernels cost little beside the data, and XLA updates each slot in place
    where a whole new value would take a buffer-sized temporary.
    """
    by_buffer: dict[int, tuple[Any, dict[Any, tuple[View, Any]]]] = {}
    for view, value in pairs:
        # Keyed by place, so a later write into the same slot replaces an earlier one.
        by_buffer.setdefault(id(view.buffer), (view.buffer, {}))[1][view.where] = (view, value)
    for buffer, writes in by_buffer.values():
        places = list(writes)
        flat = len(places) > 1 and all(type(w) is tuple for w in places)
        written = sum(w[1] - w[0] for w in places) if flat else 0
        if flat and 2 * written >= buffer.shape[0] and written <= _SMALL * len(places):
            buffer[...] = _spliced(buffer, writes)
            for view, value in writes.values():
                _remember(view, value)
        else:
            for view, value in writes.values():
                view[...] = value


def _spliced(buffer: Any, writes: dict[Any, tuple[View, Any]]) -> Any:
    """The whole new value of a flat ``buffer`` after ``writes`` (by ``(start, stop)``)."""
    parts: list[Any] = []
    current = None
    pos = 0
    for start, stop in sorted(writes):
        if start > pos:
            current = buffer[...] if current is None else current
            parts.append(jax.lax.slice(current, (pos,), (start,)))
        view, value = writes[(start, stop)]
        parts.append(view._bits(value))
        pos = stop
    if pos < buffer.shape[0]:
        current = buffer[...] if current is None else current
        parts.append(jax.lax.slice(current, (pos,), (buffer.shape[0],)))
    return jnp.concatenate(parts)


_storage.register_storage(View, write_many=_write_views)


def _flatten_alone(view: View) -> Any:
    """JAX flattens a View only when a Variable of a packed tree reaches it without its
    ``st.Packed`` (whose leaves are the buffers, never the views): refuse it there,
    before JAX refuses the View as an argument or a read or write half happens."""
    raise StructureError(
        f"A Variable of a packed tree ({view.dtype}[{','.join(map(str, view.shape))}]) "
        "was passed to JAX without its packed tree: part of it (packed['layer']), or a "
        "State from st.split(packed). Its value lives in a slice of a buffer that JAX "
        "only receives with the whole st.Packed, so it can be neither read nor written "
        "there. Pass the whole packed tree to jax.jit and pick the part inside the "
        "function, or pass a plain copy: st.freeze(part) to read, st.mutable(st.freeze("
        "part)) for a mutable tree of its own."
    )


def _unflatten_never(aux: Any, children: Any) -> View:  # pragma: no cover - unreachable
    raise AssertionError("a View is never flattened, so never unflattened")


jtu.register_pytree_node(View, _flatten_alone, _unflatten_never)
