"""Variables: boxes around an array that a ``jax.jit`` function can update in place.

A Variable holds either a ``jax.Array`` (it is *frozen*) or mutable storage, normally a
``jax.Ref`` (it is *mutable*). It is a pytree node whose one child is that raw object, so
``jax.jit`` passes the Ref straight through: a write inside the function lands in the
caller's buffer (the lowered HLO aliases input and output).
"""

import operator
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _recall
from ._array_ops import ArrayBehaviour
from ._config import mutable_arrays_enabled
from ._errors import RefValueError, UnreadableValueError, VariableWriteError

# Tracer types JAX hands a differentiated function (statetree._jax.AD_TRACERS). A Ref
# among them means a mutable Variable was given to a differentiation transform as a
# differentiated argument: jax.vjp, jax.jvp, jax.jacfwd, jax.hessian, jax.linearize (and
# jax.grad, jax.value_and_grad, jax.jacrev before JAX 0.11, which refuse Ref arguments
# themselves from 0.11, before statetree sees them).
from ._jax import AD_TRACERS as _AD_TRACERS
from ._jax import Tracer
from ._weak import WEAK_TYPE, as_weak, is_weak, weak_metadata
from ._write import plan as _plan
from ._write import rules as _writes
from ._write import storage as _storage

__all__ = [
    "Variable",
    "Param",
    "BatchStat",
    "Cache",
    "OptState",
    "is_mutable",
    "raw_of",
    "DIFFERENTIATE_FROZEN",
    "UNHOLDABLE_FIX",
]

# What to do about a mutable tree given to a differentiation transform: the end of
# statetree's error, and the advice docs/concepts.md gives next to JAX's own error.
DIFFERENTIATE_FROZEN = (
    "JAX differentiates values, and a mutable Variable holds a jax.Ref, which is state; "
    "statetree does not take part in JAX's Ref gradients (jax.vjp(...).with_refs, which "
    "JAX's own error for jax.grad suggests from JAX 0.11). Freeze it first and "
    "differentiate the frozen copy: jax.grad(loss)(st.freeze(params)); write the result "
    "back with optimizer.update(...) or st.update(...). State the function only updates "
    "(batch statistics) can stay mutable: close over it, or pass it in an argument that "
    "is not differentiated."
)


class Variable(ArrayBehaviour, _plan.Box):
    """A box around an array value that ``jax.jit`` can update in place.

    A Variable is *mutable* when it holds a ``jax.Ref`` and *frozen* when it holds a plain
    ``jax.Array``. It is a pytree node whose one child is that raw value, so ``jax.jit``
    passes a Ref straight through and a write inside the function lands in the caller's
    buffer.

    Reads: ``v[...]``, ``v[idx]``, ``v.value``. Writes: ``v[...] = x``, ``v[idx] = x``,
    ``v.value = x``, with NumPy assignment rules: the value broadcasts to the indexed
    shape, Python and NumPy scalars take the Variable's dtype (in range), a dtype that
    ``same_kind`` casting rejects is an error, and so is a static index out of range.
    Every write is checked before anything is written (statetree's one write path, the
    same as ``st.update``'s). A Variable also behaves like its array: operators,
    ``jnp`` functions, ``np.asarray``, ``.shape``, ``.dtype``, ``len``, iteration.

    A Variable made from a weakly typed value (a Python scalar, ``jnp.asarray(0.5)``)
    keeps its promotion on every JAX version: ``v.weak_type`` is True and reads are
    weakly typed (``jax.new_ref`` itself drops weak types from JAX 0.11.2).

    Subclasses are *kinds* (``Param``, ``BatchStat``, ...) that filters select on. A kind
    whose class attribute ``differentiable`` is False has writes wrapped in
    ``jax.lax.stop_gradient``, so running statistics can be updated inside a loss under
    ``jax.grad``, and keeps its value in a Ref of JAX's ``no_grad_no_remat`` kind, so a
    write inside ``jax.checkpoint`` (remat) happens once, not again when the forward
    pass is recomputed.

    Args:
      value: the initial array (anything ``jnp.asarray`` takes). A ``jax.Ref`` is
        refused: read it first (``ref[...]``), or use ``st.mutable`` on the tree holding it.
      mutable: ``True`` keeps the value in a fresh ``jax.Ref``; ``False`` keeps a plain
        ``jax.Array``; ``None`` (default) follows ``st.use_mutable_arrays``.
      **metadata: anything to remember with the value; read back as ``v.metadata``.

    Raises:
      RefValueError: ``value`` is a ``jax.Ref``.
      VariableWriteError: ``value`` is no single array (a dict, a tuple of arrays, a
        string, None); on a write, when the value is no array, its shape does not
        broadcast to the indexed shape, its dtype cannot be cast (``same_kind``), or a
        Python or NumPy integer scalar is out of the dtype's range.
      UnreadableValueError: ``value`` (or a written value) is a deleted or donated
        array, or a tracer that escaped its transform.
      TypeError: ``mutable`` is not a bool or None.
      FrozenVariableError: on a write, when the Variable is frozen.
      VariableIndexError: on a read or a write, a static index out of range (NumPy
        refuses it; JAX would clip a read and drop a write).

    Examples:
      A mutable Variable is updated in place by a jitted function that returns nothing:

      >>> import jax, jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.array([1, 2, 3]), mutable=True, note="counts")
      >>> @jax.jit
      ... def increment(v):
      ...     v[...] += 1
      >>> increment(v)
      >>> v
      Variable(int32[3], mutable=True, note='counts', value=[2, 3, 4])

      Reads index like an array; writes broadcast:

      >>> v[1:], v[None].shape
      (Array([3, 4], dtype=int32), (1, 3))
      >>> v[0] = 10
      >>> v[...] * 2
      Array([20,  6,  8], dtype=int32)
      >>> v.metadata["note"]
      'counts'
    """

    __slots__ = ("__weakref__", "_metadata", "_raw")

    differentiable: ClassVar[bool] = True

    _raw: Any
    # Sorted (name, value) pairs, after one (WEAK_TYPE, True) for a weakly typed value.
    _metadata: tuple[tuple[Any, Any], ...]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_kind(cls)

    def __init__(self, value: Any, *, mutable: bool | None = None, **metadata: Any) -> None:
        name = type(self).__name__
        if mutable is not None and not isinstance(mutable, bool):
            raise TypeError(
                f"{name}(value, mutable={mutable!r}): mutable must be True, False or None "
                f"(follow st.use_mutable_arrays), not a {type(mutable).__name__}; a string "
                "such as 'false' would count as true. Pass a bool."
            )
        if isinstance(value, Variable):
            value = value.value
        if _storage.is_storage(value):
            raise RefValueError(
                f"{name}(value): value is a jax.Ref, but a Variable owns its "
                "storage and two owners of one Ref would alias. Pass ref[...] to copy "
                "its current value, or call st.mutable(tree) on a tree holding raw Refs."
            )
        _check_initial(name, value)
        if mutable is None:
            mutable = mutable_arrays_enabled()
        array = jnp.asarray(_writes.scalar(value))
        self._raw = _storage.new_storage(array, type(self).differentiable) if mutable else array
        self._metadata = weak_metadata(array, tuple(sorted(metadata.items())))

    @classmethod
    def _from_raw(cls, raw: Any, metadata: tuple[tuple[Any, Any], ...]) -> "Variable":
        v = object.__new__(cls)
        v._raw = raw
        v._metadata = metadata
        return v

    # ---------------------------------------------------------------- description
    @property
    def mutable(self) -> bool:
        """True when the value lives in mutable storage (a ``jax.Ref``), False when it is
        a plain ``jax.Array`` (frozen)."""
        return _storage.is_storage(self._raw)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The keyword metadata given at construction, read-only."""
        metadata = self._metadata
        return types.MappingProxyType(dict(metadata[1:] if is_weak(metadata) else metadata))

    @property
    def weak_type(self) -> bool:
        """Whether the value is weakly typed, as ``jax.Array.weak_type``: True when the
        Variable was made from a weakly typed value (a Python scalar, ``jnp.asarray(1.0)``).
        Reads are then weakly typed too, on every JAX version, so the Variable promotes
        as the value it was given (``v * bf16_array`` is bfloat16)."""
        return is_weak(self._metadata)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the value."""
        return tuple(self._raw.shape)

    @property
    def dtype(self) -> Any:
        """The dtype of the value."""
        return self._raw.dtype

    @property
    def ndim(self) -> int:
        """The number of dimensions of the value."""
        return len(self._raw.shape)

    @property
    def size(self) -> int:
        """The number of elements of the value."""
        return int(np.prod(self._raw.shape, dtype=np.int64))

    @property
    def sharding(self) -> Any:
        """The ``jax.sharding.Sharding`` of the value (kept by every conversion). Inside a
        transform, the traced value's abstract sharding, as ``jax.typeof(x).sharding``
        gives (tracers themselves have none)."""
        raw = self._raw
        if isinstance(raw, Tracer):
            return jax.typeof(raw).sharding
        return raw.sharding

    # ---------------------------------------------------------------- reads
    @property
    def value(self) -> Any:
        """The current value as a ``jax.Array`` (for a mutable Variable, a snapshot that
        later writes do not change), weakly typed when the Variable is (``weak_type``).
        Assigning to it is the same as ``v[...] = x``."""
        value = _storage.read(self._raw)
        metadata = self._metadata
        if metadata and metadata[0][0] is WEAK_TYPE:
            return as_weak(value)
        return value

    @value.setter
    def value(self, new: Any) -> None:
        self._write(Ellipsis, new)

    def __getitem__(self, idx: Any) -> Any:
        value = self.value
        if idx is Ellipsis:
            return value
        # A static index out of range is refused, as NumPy does (JAX would clip it).
        _writes.check_index(tuple(self._raw.shape), idx, self._describe)
        # Indexing the array (never the raw Ref) keeps NumPy semantics: a raw Ref would
        # silently drop `None` axes.
        return value[idx]

    # ---------------------------------------------------------------- writes
    def __setitem__(self, idx: Any, new: Any) -> None:
        self._write(idx, new)

    def _write(self, idx: Any, new: Any) -> None:
        _plan.write_one(self, idx, new)

    # ---------------------------------------------------------------- display
    def _describe(self) -> str:
        dtype = getattr(self._raw, "dtype", "?")
        shape = ",".join(map(str, getattr(self._raw, "shape", ())))
        form = "mutable" if self.mutable else "frozen"
        return f"{form} {type(self).__name__} {dtype}[{shape}]"

    def __repr__(self) -> str:
        raw = self._raw
        dtype = getattr(raw, "dtype", None)
        if dtype is None:  # a placeholder leaf JAX put in while mapping over trees
            return f"{type(self).__name__}({raw!r})"
        head = f"{type(self).__name__}({dtype}[{','.join(map(str, raw.shape))}]"
        parts = [head, f"mutable={self.mutable}"]
        parts.extend(f"{k}={v!r}" for k, v in self._metadata if k is not WEAK_TYPE)
        if _storage.is_traced(raw):
            parts.append("traced")
        elif getattr(raw, "size", 0) <= 16 and _writes.family(dtype) >= 0:  # not for PRNG keys
            value = np.asarray(_storage.read(raw))
            parts.append("value=" + np.array2string(value, separator=", "))
        return ", ".join(parts) + ")"


def _what(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


# NumPy dtype kinds JAX has no array type for: objects, bytes, strings, and void (record
# dtypes, and JAX's own float0: the data-free type of gradients of integer inputs).
_UNHOLDABLE_KINDS = {"O": "Python objects", "S": "bytes", "U": "strings", "V": "no numbers"}


def unholdable(value: Any) -> str | None:
    """Why no ``jax.Array`` (so no Variable) can hold the NumPy value ``value``; None
    when one can (or when ``value`` is not a NumPy array or scalar)."""
    if not isinstance(value, (np.ndarray, np.generic)):
        return None
    kind = _UNHOLDABLE_KINDS.get(value.dtype.kind)
    if kind is None:
        return None
    if value.dtype == jax.dtypes.float0:
        return (
            "a NumPy array of dtype float0 (the data-free type JAX gives the gradients "
            "of integer and boolean inputs)"
        )
    return f"a NumPy array of dtype {value.dtype} ({kind})"


UNHOLDABLE_FIX = (
    "JAX arrays, and so jax.Refs and Variables, hold numbers, booleans and PRNG keys "
    "only. Convert the value (np.asarray(x, np.float32)), keep it out of the tree as a "
    "static field, or drop float0 gradient leaves before storing them."
)


def _check_initial(name: str, value: Any) -> None:
    """Refuse what is no single array: a Variable holds exactly one."""
    reason = unholdable(value)
    if reason is not None:
        raise VariableWriteError(f"{name}(value): value is {reason}. {UNHOLDABLE_FIX}")
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise VariableWriteError(
            f"{name}(value): value is {_what(value)}, not an array. A Variable "
            "holds one array; for a tree of values (a dict of arrays), make every array "
            "a Variable with st.mutable(tree), or st.Variable each array."
        )
    if isinstance(value, (list, tuple)) and any(
        isinstance(leaf, (jax.Array, np.ndarray, Variable)) or _storage.is_storage(leaf)
        for leaf in jax.tree_util.tree_leaves(value, is_leaf=lambda x: isinstance(x, Variable))
    ):
        raise VariableWriteError(
            f"{name}(value): value is a {type(value).__name__} holding arrays. A Variable "
            "holds one array, and stacking them silently would change their shape: make "
            "one Variable per array (st.mutable(tree) converts a whole tree), or stack "
            "them on purpose with jnp.stack(value)."
        )
    reason = _writes.unreadable(value)
    if reason is not None:
        raise UnreadableValueError(f"{name}(value): the value {reason}.")


# A Variable flattened by JAX inside a trace may be handed to a nested transform, whose
# writes (a cached trace replayed without Python) statetree would not see: the gradient
# remembered for its Ref in this trace is dropped (statetree._recall).
_forget = _recall.forget


def _flatten_with_keys(v: Variable) -> tuple[tuple[tuple[Any, Any]], Any]:
    if _recall.live:
        _forget(v._raw)
    return ((jtu.GetAttrKey("value"), v._raw),), v._metadata


def _flatten(v: Variable) -> tuple[tuple[Any], Any]:
    if _recall.live:
        _forget(v._raw)
    return (v._raw,), v._metadata


def _unflattener(cls: type[Variable]) -> Any:
    def unflatten(metadata: tuple[tuple[Any, Any], ...], children: Any) -> Variable:
        (raw,) = children
        if isinstance(raw, _AD_TRACERS) and _storage.is_storage(raw):
            raise RefValueError(
                f"A mutable {cls.__name__} was passed as a differentiated argument to a "
                "JAX differentiation transform (jax.grad, jax.vjp, jax.jvp, jax.jacfwd, "
                f"...). {DIFFERENTIATE_FROZEN}"
            )
        v = object.__new__(cls)
        v._raw = raw
        v._metadata = metadata
        return v

    return unflatten


def _register_kind(cls: type[Variable]) -> None:
    jtu.register_pytree_with_keys(cls, _flatten_with_keys, _unflattener(cls), _flatten)


_register_kind(Variable)


class Param(Variable):
    """A trainable parameter (differentiable): what ``st.split(model, st.Param, ...)``
    selects for ``jax.grad``.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> st.Param(jnp.zeros(2))
      Param(float32[2], mutable=False, value=[0., 0.])
      >>> st.Param.differentiable
      True
    """

    __slots__ = ()
    differentiable = True


class BatchStat(Variable):
    """Running statistics, e.g. BatchNorm's mean and variance (not differentiable).

    Writes are wrapped in ``jax.lax.stop_gradient``, so a loss function may update them
    while ``jax.grad`` differentiates it.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> mean = st.BatchStat(jnp.zeros(2), mutable=True)
      >>> def loss(w):
      ...     mean[...] = 0.5 * w      # a side effect inside the loss
      ...     return jnp.sum(w**2)
      >>> jax.grad(loss)(jnp.ones(2))
      Array([2., 2.], dtype=float32)
      >>> mean[...]
      Array([0.5, 0.5], dtype=float32)
    """

    __slots__ = ()
    differentiable = False


class Cache(Variable):
    """Cached values such as attention keys and values (not differentiable).

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> keys = st.Cache(jnp.zeros((4, 2)), mutable=True)
      >>> keys[1] = jnp.ones(2)  # fill one slot
      >>> keys[:2]
      Array([[0., 0.],
             [1., 1.]], dtype=float32)
      >>> st.Cache.differentiable
      False
    """

    __slots__ = ()
    differentiable = False


class OptState(Variable):
    """Optimizer state, such as moment estimates and step counts (not differentiable).

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> count = st.OptState(jnp.array(0), mutable=True)
      >>> count[...] += 1
      >>> count
      OptState(int32[], mutable=True, value=1)
    """

    __slots__ = ()
    differentiable = False


def is_mutable(x: Any) -> bool:
    """Whether ``x`` can be written in place.

    Args:
      x: anything.

    Returns:
      True for a mutable Variable and for mutable storage (a ``jax.Ref``, also one traced
      inside ``jax.jit``); False for frozen Variables, arrays and everything else.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> st.is_mutable(st.Variable(jnp.zeros(2), mutable=True))
      True
      >>> st.is_mutable(st.Variable(jnp.zeros(2), mutable=False)), st.is_mutable(jnp.zeros(2))
      (False, False)
      >>> st.is_mutable(jax.new_ref(jnp.zeros(2)))
      True
    """
    if isinstance(x, Variable):
        return x.mutable
    return _storage.is_storage(x)


# The one way the rest of statetree reads what a Variable holds (a jax.Array, a jax.Ref,
# or a packed view): a C-level getter, cheap in the flatten's and conversion's maps.
raw_of: Callable[[Variable], Any] = operator.attrgetter("_raw")


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
for _cls in (Variable, Param, BatchStat, Cache, OptState):
    _cls.__module__ = "statetree"
