"""Packed trees: ``st.mutable(tree, packed=True)``.

JAX dispatches a jitted call that takes ``jax.Ref`` arguments on a slow Python path,
with a cost per Ref, and flattens every Variable with a Python function. A training step
over a thousand small Variables pays that a thousand times per call. A *packed* tree
copies its Variables' values into a few flat buffers, one ``jax.Ref`` per bit width
and sharding (float32 and int32 share a buffer of 32-bit words), and gives every
Variable a :class:`View` of its slice instead of a Ref of its own. ``jax.jit`` then sees
a handful of Refs and one Python flatten, whatever the size of the tree; inside the
function, reads are static slices of the buffer and writes go into it, aliased to the
caller's buffer (see :mod:`statetree._views`).

Variables partitioned across devices (a ``NamedSharding`` that is not replicated) are
stacked with others of their shape and sharding along a new leading axis, so each keeps
its layout; what cannot be packed either way (PRNG keys, other shardings) gets a buffer
of its own, and so does every large array (see :data:`LARGE`).

:class:`Packed` is what a caller holds: a pytree for JAX (leaves: the buffers, then any
values left unpacked; aux data: the static layout, hashed once), and a node for
statetree's traversal (children: the user's tree), so ``st.freeze``, ``st.split``,
``st.merge``, ``st.state`` and ``st.update`` take it as they take the tree.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from . import _graph, _views
from ._errors import RefValueError, StructureError
from ._graph import GraphDef
from ._jax import AD_TRACERS as _AD_TRACERS
from ._jax import Tracer
from ._variables import Variable, raw_of
from ._views import View, Where
from ._weak import weak_metadata
from ._write import storage as _storage

__all__ = ["Packed", "pack", "from_tree", "assemble"]


class _Layout:
    """The static part of a Packed tree (its pytree aux data): the tree's GraphDef and,
    per value, where it lives. Hashable with the hash cached: jit compares it per call."""

    __slots__ = ("_hash", "entries", "graphdef", "shardings")

    def __init__(
        self, graphdef: GraphDef, entries: tuple[Any, ...], shardings: tuple[Any, ...]
    ) -> None:
        self.graphdef = graphdef
        # Per value: (buffer, where, shape, dtype, kind, metadata) for a view, None for a
        # value left as it was (it follows the buffers among the pytree leaves).
        self.entries = entries
        self.shardings = shardings  # per buffer (None inside a trace)
        self._hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((self.graphdef, self.entries, self.shardings))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, _Layout):
            return NotImplemented
        return hash(self) == hash(other) and (
            (self.graphdef, self.entries, self.shardings)
            == (other.graphdef, other.entries, other.shardings)
        )


class Packed:
    """A tree whose Variables are views into a few packed buffers (one ``jax.Ref`` per
    bit width and sharding; large arrays keep one of their own). Made by
    ``st.mutable(tree, packed=True)``.

    Pass it to ``jax.jit`` as the tree itself; it forwards attribute access, item
    access, iteration, ``len`` and calls to the tree, so ``packed.layers[0].kernel``,
    ``packed["w"][...] = x`` and ``packed(x)`` work as on the tree. Its structure is fixed:
    write values into its Variables, do not assign new ones. ``st.freeze(packed)`` gives
    the plain frozen tree back.
    """

    __slots__ = ("_buffers", "_layout", "_leaves", "_tree")

    _tree: Any
    _buffers: tuple[Any, ...]
    _layout: _Layout
    _leaves: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "Packed trees are made by st.mutable(tree, packed=True), not constructed directly."
        )

    @classmethod
    def _make(cls, tree: Any, buffers: Sequence[Any], layout: _Layout, loose: list[Any]) -> Any:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_tree", tree)
        object.__setattr__(obj, "_buffers", tuple(buffers))
        object.__setattr__(obj, "_layout", layout)
        object.__setattr__(obj, "_leaves", [*buffers, *loose])
        return obj

    # ---------------------------------------------------------------- the tree's face
    @property
    def buffers(self) -> tuple[Any, ...]:
        """The packed buffers: one ``jax.Ref`` per bit width and sharding, and one per
        large array."""
        return self._buffers

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_tree"), name)

    def __getitem__(self, key: Any) -> Any:
        return self._tree[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tree)

    def __len__(self) -> int:
        return len(self._tree)

    def __contains__(self, key: object) -> bool:
        return key in self._tree

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tree(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _fixed_structure(f"set attribute {name!r}", f"packed.{name}[...] = x")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise _fixed_structure(f"assign item {key!r}", f"packed[{key!r}][...] = x")

    def __repr__(self) -> str:
        n = sum(entry is not None for entry in self._layout.entries)
        head = f"Packed({n} Variables in {len(self._buffers)} buffer(s)"
        buffers = ", ".join(f"{b.dtype}[{b.shape[0] if b.ndim else ''}]" for b in self._buffers)
        return f"{head}: {buffers}; tree={self._tree!r})"


def _fixed_structure(change: str, write: str) -> StructureError:
    return StructureError(
        f"Cannot {change} of a packed tree: its structure is fixed when it is packed "
        "(each Variable is a view into a shared buffer). Write values into its Variables "
        f"instead ({write}), or unpack it with st.freeze(packed), change that tree, and "
        "pack again."
    )


# -------------------------------------------------------------------- JAX pytree
def _flatten(p: Packed) -> tuple[list[Any], _Layout]:
    _views.forget()  # see _views._remember
    return p._leaves, p._layout


def _unflatten(layout: _Layout, leaves: Sequence[Any]) -> Packed:
    leaves = list(leaves)
    n = len(layout.shardings)
    buffers, loose = leaves[:n], leaves[n:]
    if any(isinstance(b, _AD_TRACERS) for b in buffers):
        raise RefValueError(
            "A packed tree was passed as a differentiated argument to a JAX "
            "differentiation transform (jax.grad, jax.vjp, jax.jvp, jax.jacfwd, "
            "...). Its buffers are jax.Refs, which are state, and statetree does not take "
            "part in JAX's Ref gradients (jax.vjp(...).with_refs). Differentiate its "
            "frozen copy instead: jax.grad(loss)(st.freeze(packed)), and write the result "
            "back with st.update(packed, ...) or optimizer.update(packed, grads)."
        )
    shardings = layout.shardings
    values: list[Any] = []
    rest = iter(loose)
    for entry in layout.entries:
        if entry is None:
            values.append(next(rest))
        else:
            b, where, shape, dtype, kind, metadata = entry
            view = View(buffers[b], where, shape, dtype, shardings[b])
            values.append(kind._from_raw(view, metadata))
    tree = _graph.unflatten(layout.graphdef, values)
    return Packed._make(tree, buffers, layout, loose)


# -------------------------------------------------------------------- statetree node
def _children(p: Packed) -> tuple[Any, tuple[type]]:
    return p._tree, (Packed,)


def _rebuild(aux: tuple[type], tree: Any) -> Any:
    return from_tree(tree)


def _enable() -> None:
    # Registered (with JAX and the traversal) before the first Packed is made: the
    # traversal then looks for nodes, a cost only programs that pack (or register_node)
    # pay.
    _graph.register_internal_node(
        Packed, children=_children, rebuild=_rebuild, flatten=_flatten, unflatten=_unflatten
    )


def from_tree(tree: Any) -> Any:
    """A Packed around ``tree`` whose view Variables name their buffers; the tree
    itself when no Variable in it is a view (e.g. after ``st.freeze``)."""
    graphdef, values = _graph.flatten(tree)
    return assemble(tree, graphdef, values)


def assemble(tree: Any, graphdef: GraphDef, values: list[Any]) -> Any:
    """:func:`from_tree` for a tree already flattened into ``graphdef`` and ``values``
    (whose kinds may have changed since: arrays packed into Variables)."""
    kinds = tuple(type(v) if isinstance(v, Variable) else None for v in values)
    if kinds != graphdef.kinds:
        graphdef = GraphDef(graphdef.parts, kinds)
    buffer_index: dict[int, int] = {}
    buffers: list[Any] = []
    shardings: list[Any] = []
    entries: list[Any] = []
    loose: list[Any] = []
    for value in values:
        raw = raw_of(value) if isinstance(value, Variable) else None
        if type(raw) is not View:
            entries.append(None)
            loose.append(value)
            continue
        b = buffer_index.get(id(raw.buffer))
        if b is None:
            b = buffer_index[id(raw.buffer)] = len(buffers)
            buffers.append(raw.buffer)
            shardings.append(raw.sharding)
        entries.append((b, raw.where, raw.shape, raw.dtype, type(value), value._metadata))
    if not buffers:
        return tree
    layout = _Layout(graphdef, tuple(entries), tuple(shardings))
    return Packed._make(tree, buffers, layout, loose)


# -------------------------------------------------------------------- packing
_BITS = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}


def _bits_dtype(dtype: Any) -> Any:
    """The dtype of the flat buffer holding ``dtype``: an unsigned integer of its width
    for integers and floats (so float32 and int32 share one buffer), else itself (also
    for sub-byte types such as int4, which no 8-bit integer can bitcast)."""
    dtype = np.dtype(dtype)
    numeric = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    if not numeric or jax.dtypes.itemsize_bits(dtype) != 8 * dtype.itemsize:
        return dtype
    return _BITS.get(dtype.itemsize, dtype)


# Arrays of at least this many elements (4 MiB of float32) keep a buffer of their own.
# Packing saves one Ref's dispatch (about 10 us on the host) per array; for an array this
# size the step's own work on it costs as much, while a packed slice costs memory: XLA
# materializes a slice of a buffer that feeds a matrix product, so the step would hold a
# copy of every large weight it multiplies.
LARGE = 1 << 20


def _group_of(array: Any, i: int) -> tuple[str, Any, Any]:
    """How value ``i``, ``array``, is packed: ("flat", bits dtype, sharding) into a 1-D
    buffer shared with arrays of its width and (replicated) sharding; ("stack", (dtype,
    shape), sharding) as a row of a buffer of arrays partitioned alike; ("own", i, None)
    alone (large arrays, PRNG keys, layouts that cannot share), keyed by the value so
    that one array met at two paths still makes two buffers."""
    own = ("own", i, None)
    dtype = array.dtype
    if jnp.issubdtype(dtype, jax.dtypes.extended) or array.size >= LARGE:
        return own
    if isinstance(array, Tracer):
        # Traced values may be differentiated: a bitcast into a shared integer buffer
        # would cut their gradient to zero, silently. One buffer per dtype keeps it.
        return ("flat", np.dtype(dtype), None)
    sharding = array.sharding
    if sharding.is_fully_replicated:
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(
                sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind
            )
        elif len(sharding.device_set) > 1:
            return own
        return ("flat", _bits_dtype(dtype), sharding)
    if isinstance(sharding, NamedSharding):
        return ("stack", (dtype, tuple(array.shape)), sharding)
    return own


def _build_buffer(
    how: str, key: Any, sharding: Any, arrays: list[Any], differentiable: bool = True
) -> tuple[Any, list[Where], Any]:
    """One group's buffer (a new ``jax.Ref``, of the no-grad-no-remat kind when it holds
    non-differentiable kinds), each array's place in it, and the sharding its views
    report."""
    if how == "own":
        (array,) = arrays
        storage = _storage.new_storage(array, differentiable)
        return storage, [None], getattr(array, "sharding", None)
    if how == "stack":
        spec = tuple(sharding.spec) + (None,) * (arrays[0].ndim - len(sharding.spec))
        stacked = NamedSharding(sharding.mesh, PartitionSpec(None, *spec))
        data = jax.device_put(jnp.stack(arrays), stacked)
        return _storage.new_storage(data, differentiable), list(range(len(arrays))), sharding
    sizes = [int(np.prod(a.shape, dtype=np.int64)) for a in arrays]
    stops = np.cumsum(sizes).tolist()
    places: list[Where] = [
        (int(stop - size), int(stop)) for stop, size in zip(stops, sizes, strict=True)
    ]
    flat = [jnp.ravel(a) for a in arrays]
    data = jnp.concatenate(
        [f if f.dtype == key else jax.lax.bitcast_convert_type(f, key) for f in flat]
    )
    if sharding is not None:
        data = jax.device_put(data, sharding)
    return _storage.new_storage(data, differentiable), places, sharding


def _buffer_kind(differentiable: dict[int, bool], members: list[int]) -> bool:
    """Whether a buffer is a differentiable Ref (JAX's default kind) or one of the
    no-grad-no-remat kind, whose writes ``jax.checkpoint`` never replays.

    A buffer holding any non-differentiable kind (batch statistics, optimizer state) must
    be the latter, or a counter bumped under remat is bumped twice. Differentiable kinds
    may share it when it is made from concrete values: such a Ref exists outside every
    transform, so ``jax.grad`` never differentiates through it (reads of a Ref that a
    differentiated function closes over have zero tangent whatever its kind, and a packed
    tree is refused as an argument of ``jax.grad``); under remat its reads are then saved
    rather than replayed, which returns the same values. Traced values may be
    differentiated, so there the kinds get buffers of their own (``pack``).
    """
    return all(differentiable[i] for i in members)


def pack(values: list[Any], chosen: Sequence[bool]) -> list[Any]:
    """``values`` (of one flattened tree) with each chosen one replaced by a mutable
    Variable (the same kind and metadata) viewing a packed buffer; the rest unchanged.

    Values are copied into the buffers: the input tree is never written.
    """
    _enable()
    groups: dict[Any, list[int]] = {}
    arrays: dict[int, Any] = {}
    differentiable: dict[int, bool] = {}
    for i, (value, take) in enumerate(zip(values, chosen, strict=True)):
        if not take:
            continue
        array = _storage.read(raw_of(value) if isinstance(value, Variable) else value)
        if not isinstance(array, (jax.Array, np.ndarray, np.generic)):
            continue  # not an array (a placeholder from a tree map): leave it alone
        array = jnp.asarray(array)
        arrays[i] = array
        differentiable[i] = not isinstance(value, Variable) or type(value).differentiable
        # Traced values (possibly differentiated) keep the kinds apart; see _buffer_kind.
        apart = differentiable[i] if isinstance(array, Tracer) else None
        groups.setdefault((*_group_of(array, i), apart), []).append(i)
    out = list(values)
    for (how, key, sharding, _), members in groups.items():
        buffer, places, view_sharding = _build_buffer(
            how, key, sharding, [arrays[i] for i in members], _buffer_kind(differentiable, members)
        )
        for i, where in zip(members, places, strict=True):
            value = values[i]
            array = arrays[i]
            kind, metadata = (
                (type(value), weak_metadata(array, value._metadata))
                if isinstance(value, Variable)
                else (Variable, weak_metadata(array))
            )
            view = View(buffer, where, tuple(array.shape), array.dtype, view_sharding)
            out[i] = kind._from_raw(view, metadata)
    return out


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
Packed.__module__ = "statetree"
