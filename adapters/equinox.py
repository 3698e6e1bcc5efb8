"""Equinox models under mutable-array semantics: ``mutable``, ``freeze``, ``in_place``.

``mutable(obj)`` turns an ``eqx.Module``, an ``eqx.nn.State`` or any tree of them into
the same tree with every array in a mutable Variable:

- arrays in modules become ``st.Param`` (inexact dtypes, trainable) or ``st.Variable``
  (integers, booleans); arrays in an ``eqx.nn.State`` become ``st.BatchStat`` (not
  differentiable: written under ``jax.grad`` without complaint);
- module fields that hold no arrays (activation functions, strings, numbers) become
  *static* fields, so ``jax.jit``, ``jax.vmap`` and ``jax.lax.scan`` take the model
  directly; boolean flags stay nodes of the tree (:class:`_Flag`), so ``eqx.tree_at``
  and ``eqx.nn.inference_mode`` replace them; lists and tuples mixing data with
  functions keep the functions as static items. The converted module is an instance of
  a subclass of the original class: ``isinstance``, attribute reads and methods are the
  original's;
- an ``eqx.nn.State`` becomes a :class:`MutableState` (a subclass), whose ``get`` gives
  arrays (as Equinox's) and whose ``set`` writes every leaf into the refs at once and
  returns the same object, so ``model(x, state)`` updates the state and the returned
  state may be ignored;
- tied weights (``eqx.nn.Shared``) become one Variable reachable from both positions.

``freeze(obj)`` is the inverse: plain Equinox modules and States holding arrays.
``tree_serialise_leaves`` / ``tree_deserialise_leaves`` stand in for Equinox's, which
skip every ``jax.Ref`` (so they write nothing for a converted model).

Inside ``jax.vmap`` JAX refuses every write into a ref that is not mapped (the state is
``in_axes=None``), so a batched stateful call runs through :func:`in_place`, which calls
the function on a snapshot and commits the state it returns after the ``vmap``.
"""

import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import statetree as st

try:
    import equinox as eqx
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "statetree.adapters.equinox needs Equinox, which is not installed. Install the "
        "extra: pip install 'statetree[equinox]' (the statetree core works without it)."
    ) from e

__all__ = [
    "mutable",
    "freeze",
    "in_place",
    "MutableState",
    "tree_serialise_leaves",
    "tree_deserialise_leaves",
]

# The tracers of jax.vmap: a converted model called under vmap returns no refs (see
# `_calling`). Private in JAX; without it the eval idiom meets JAX's own error.
try:
    from jax._src.interpreters.batching import BatchTracer as _BatchTracer
except ImportError:  # pragma: no cover - private names moved
    _BatchTracer = None

_ARRAYS = (jax.Array, np.ndarray, np.generic)
T = TypeVar("T")  # mutable/freeze return the type they are given (eqx.nn.MLP stays one)


def _is_module_or_state(x: Any) -> bool:
    return isinstance(x, (eqx.Module, eqx.nn.State))


def _has_data(x: Any) -> bool:
    """True when the pytree ``x`` holds an array, a Variable or a Ref."""
    leaves = jtu.tree_leaves(x, is_leaf=lambda y: isinstance(y, st.Variable))
    return any(isinstance(leaf, (*_ARRAYS, st.Variable, jax.Ref)) for leaf in leaves)


# ----------------------------------------------------------------------------- State
class MutableState(eqx.nn.State):
    """An ``eqx.nn.State`` whose values live in mutable ``st.BatchStat`` Variables.

    ``get`` returns the Variables (they behave like arrays); ``set`` writes into them in
    place and returns this same object (the plain ``State`` returns a new one and
    invalidates itself). A State whose Variables were frozen (``st.freeze``) is updated
    functionally instead: ``set`` returns a new ``MutableState``, as Equinox does.
    """

    def get(self, item: eqx.nn.StateIndex) -> Any:
        """The entry's current values as arrays, as ``eqx.nn.State.get`` gives them, so
        layers written Equinox's way (``cache.at[i].set(...)``, ``jax.lax`` calls) run
        unchanged. The Variables themselves are ``st.state(state)``'s values."""
        return st.unbox(super().get(item))

    def set(self, item: eqx.nn.StateIndex, value: Any) -> "MutableState":
        old = super().get(item)
        where = f"MutableState.set({item.marker!r}, value)"
        pairs = _pairs(old, value, where)
        if all(t.mutable for t, _ in pairs):
            # One all-or-nothing write: st.update checks every leaf (kind, shape, dtype)
            # before it writes any, as Equinox's State.set refuses before changing anything.
            sub = st.state(old)
            assert isinstance(sub, st.State)
            news = st.State(
                {(item.marker, *p): x for p, (_, x) in zip(sub.paths(), pairs, strict=True)}
            )
            _update(self, news, where)
            return self
        # Frozen Variables: the functional update Equinox does, minus the invalidation.
        for target, leaf in pairs:
            if target.dtype != leaf.dtype:
                raise st.VariableWriteError(
                    f"{where}: a value of dtype {leaf.dtype} cannot replace the state's "
                    f"{target.dtype}. State entries keep their dtypes (as in Equinox); "
                    f"cast it first: value.astype({target.dtype})."
                )
        replaced = jtu.tree_unflatten(
            jtu.tree_structure(old, is_leaf=_is_variable),
            [type(t)(x, mutable=False) for t, x in pairs],
        )
        entries = self._entries()
        entries[item.marker] = replaced
        return MutableState.tree_unflatten(tuple(entries), tuple(entries.values()))

    def substate(self, pytree: Any) -> "MutableState":
        values, keys = super().substate(pytree).tree_flatten()
        return MutableState.tree_unflatten(keys, values)

    def update(self, substate: eqx.nn.State) -> "MutableState":
        mine = self._entries()
        values, keys = substate.tree_flatten()
        missing = [k for k in keys if k not in mine]
        if missing:
            raise st.StructureError(
                f"MutableState.update(substate): entries {missing} are not in this state. "
                "Pass a state made with state.substate(...) of this one."
            )
        # Check every entry before writing any: a bad substate changes nothing.
        flat: dict[tuple[Any, ...], Any] = {}
        for key, value in zip(keys, values, strict=True):
            pairs = _pairs(mine[key], st.unbox(value), f"MutableState.update: {key!r}")
            sub = st.state(mine[key])
            assert isinstance(sub, st.State)
            for p, (_, x) in zip(sub.paths(), pairs, strict=True):
                flat[(key, *p)] = x
        _update(self, st.State(flat), "MutableState.update(substate)")
        return self

    def _entries(self) -> dict[Any, Any]:
        values, keys = self.tree_flatten()
        return dict(zip(keys, values, strict=True))


def _pairs(old: Any, value: Any, where: str) -> list[tuple[st.Variable, Any]]:
    """(Variable, new array) for each entry of ``old``; checks structure and shapes."""
    targets, structure = jtu.tree_flatten(old, is_leaf=_is_variable)
    leaves, new_structure = jtu.tree_flatten(jtu.tree_map(jnp.asarray, value))
    if new_structure != structure:
        raise st.StructureError(
            f"{where}: value has structure {new_structure}, but the state holds "
            f"{structure}. Pass the same structure of arrays that state.get(index) returns."
        )
    for target, leaf in zip(targets, leaves, strict=True):
        if target.shape != leaf.shape:
            raise st.VariableWriteError(
                f"{where}: a value of shape {leaf.shape} cannot replace the state's "
                f"{target.shape}. State entries keep their shapes; compute the new value "
                "with the old shape."
            )
    return list(zip(targets, leaves, strict=True))


def _is_variable(x: Any) -> bool:
    return isinstance(x, st.Variable)


_VMAP_WRITE = (
    "An Equinox stateful layer wrote its new state inside jax.vmap, but the state's refs "
    "are not mapped (in_axes=None), and JAX refuses every write into an unmapped ref "
    "inside vmap (even of a value that is the same for the whole batch). Wrap the vmapped "
    "call so the state is committed after the vmap returns: "
    "statetree.adapters.equinox.in_place(jax.vmap(model, ...))(x, state)."
)


def _update(state: Any, news: st.State, where: str) -> None:
    try:
        st.update(state, news)
    except st.StructureError as e:
        raise st.StructureError(f"{where}: nothing was written.\n{e}") from None
    except Exception as e:
        if "unbatched array reference" not in str(e):
            raise
        raise st.VariableWriteError(_VMAP_WRITE) from None


def _state_with_keys(s: MutableState) -> tuple[list[tuple[Any, Any]], Any]:
    values, keys = s.tree_flatten()
    entries = [
        (jtu.DictKey(k) if isinstance(k, str) else jtu.FlattenedIndexKey(i), v)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    return entries, keys


jtu.register_pytree_with_keys(
    MutableState,
    _state_with_keys,
    lambda keys, values: MutableState.tree_unflatten(keys, tuple(values)),
    lambda s: s.tree_flatten(),
)


# ----------------------------------------------------------------------------- flags
class _Flag(int):
    """A module's boolean field (``inference``, ``use_bias``, ...) in a converted model.

    ``jax.jit`` cannot take a Python bool as a leaf (it would trace it, and ``if
    self.inference:`` would fail), yet ``eqx.tree_at`` and ``eqx.nn.inference_mode``
    replace the field as a node of the tree. A ``_Flag`` is a pytree node with no children
    (its value is static data, so jit keys its cache on it) that tree_at can find; it
    reads as the bool it holds (``if flag:``, ``flag == True``, ``repr``)."""

    def __new__(cls, value: Any) -> "_Flag":
        return super().__new__(cls, bool(value))

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__


jtu.register_pytree_node(_Flag, lambda f: ((), bool(f)), lambda aux, _: _Flag(aux))


class _FlagField:
    """The descriptor of a flag field on a converted class: a bool assigned to it (by
    ``eqx.tree_at``'s rebuild, or Equinox's unflatten) is kept as a :class:`_Flag`."""

    def __init__(self, name: str, default: Any) -> None:
        self.name = name
        self.default = default

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.default
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        is_bool = isinstance(value, (bool, np.bool_)) and not isinstance(value, _Flag)
        obj.__dict__[self.name] = _Flag(value) if is_bool else value


def _plain(x: Any) -> Any:
    return bool(x) if isinstance(x, _Flag) else x


# ----------------------------------------------------------------------------- mixed lists
class _MixedList(list):
    """A list field mixing data (modules, arrays) with functions and other non-array
    items (Equinox's ``layers = [Conv2d, MaxPool2d, jax.nn.relu, jnp.ravel, Linear]``):
    the data items are the pytree children, the rest is static data of the node (hashed
    into jit's cache key), so jax.jit takes it; it reads and iterates as the list."""

    __slots__ = ()


class _MixedTuple(tuple):
    """The tuple form of :class:`_MixedList`."""

    __slots__ = ()


def _mixed_flatten(x: Any) -> tuple[list[tuple[Any, Any]], Any]:
    data, static = [], []
    for i, item in enumerate(x):
        if _is_static_item(item):
            static.append((i, item))
        else:
            data.append((jtu.SequenceKey(i), item))
    return data, (len(x), tuple(static))


def _mixed_unflattener(cls: type) -> Callable[[Any, Any], Any]:
    def unflatten(aux: Any, children: Any) -> Any:
        n, static = aux
        items: list[Any] = [None] * n
        fixed = dict(static)
        it = iter(children)
        for i in range(n):
            items[i] = fixed[i] if i in fixed else next(it)
        return cls(items)

    return unflatten


def _mixed_flatten_plain(x: Any) -> tuple[list[Any], Any]:
    keyed, static = _mixed_flatten(x)
    return [child for _, child in keyed], static


for _cls in (_MixedList, _MixedTuple):
    jtu.register_pytree_with_keys(
        _cls,
        _mixed_flatten,
        _mixed_unflattener(_cls),
        _mixed_flatten_plain,
    )


def _is_static_item(item: Any) -> bool:
    """A non-array leaf (a function, a number, a string): static in a mixed list."""
    leaves = jtu.tree_leaves(item, is_leaf=_is_variable)
    return len(leaves) == 1 and leaves[0] is item and not isinstance(item, (*_ARRAYS, st.Variable))


def _mix(value: Any) -> Any:
    """Lists and tuples (nested too) that mix data with static items -> mixed forms."""
    if type(value) not in (list, tuple):
        return value
    items = [_mix(v) for v in value]
    if any(map(_has_data, items)) and any(map(_is_static_item, items)):
        return (_MixedList if type(value) is list else _MixedTuple)(items)
    return type(value)(items)


# ----------------------------------------------------------------------------- modules
# (original class, static fields, flag fields, reads) -> subclass; subclass -> original.
_SUBCLASSES: dict[tuple[type, frozenset[str], frozenset[str], bool], type] = {}
_ORIGINAL: dict[type, type] = {}
# How deep the current thread is in calls of converted modules (see `_calling`).
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("statetree_eqx_depth", default=0)


def _subclass(cls: type, static: frozenset[str], flags: frozenset[str], reads: bool) -> type:
    """``cls`` with the fields ``static`` declared static and the bool fields ``flags``
    kept as :class:`_Flag` nodes: same name, methods and fields. Its ``__call__`` is the
    original's, seen through :func:`_calling` (and with ``reads``, :func:`_reading`)."""
    key = (cls, static, flags, reads)
    sub = _SUBCLASSES.get(key)
    if sub is not None:
        return sub
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__annotations__": annotations,
    }
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        if f.name not in static:
            continue
        annotations[f.name] = f.type
        kwargs: dict[str, Any] = {"init": f.init, "repr": f.repr}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        namespace[f.name] = dataclasses.field(metadata={**f.metadata, "static": True}, **kwargs)
    if callable(cls):
        call = cls.__call__
        namespace["__call__"] = _calling(_reading(call) if reads else call)
    sub = type(cls)(cls.__name__, (cls,), namespace)
    for name in flags:
        type.__setattr__(sub, name, _FlagField(name, defaults.get(name, dataclasses.MISSING)))
    _SUBCLASSES[key] = sub
    _ORIGINAL[sub] = cls
    return sub


def _reading(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` run on a copy of the module whose own Variables are read to arrays.

    Equinox's layers hand their weights to ``jax.lax`` primitives (``conv_general_dilated``
    in ``Conv``), which JAX 0.10 refuses for objects that are not arrays ("Triggering
    __jax_array__() during abstractification is no longer supported"). Equinox's layers
    are functional (they never write their fields), so reading the values first changes
    nothing else. Submodules are left alone: each converted layer reads its own.
    """

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        attrs = {
            k: v.value if isinstance(v, st.Variable) else _plain(v) for k, v in vars(self).items()
        }
        return call(_rebuild(_ORIGINAL[type(self)], attrs), *args, **kwargs)

    return __call__


def _calling(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call``, except that the outermost converted module called under ``jax.vmap``
    returns a snapshot (a plain ``eqx.nn.State`` of arrays) in place of a converted
    state: JAX cannot return refs from ``vmap`` (Equinox's eval idiom
    ``jax.vmap(eqx.Partial(model, state=state))(xs)`` returns the state). Nothing is
    lost: a write into the state inside ``vmap`` raises (see :func:`in_place`), so the
    refs hold what the snapshot holds."""

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        depth = _DEPTH.get()
        # Checked before the call: a plain eqx.nn.State given in is invalid after it.
        batched = depth == 0 and _under_vmap((args, kwargs))
        token = _DEPTH.set(depth + 1)
        try:
            out = call(self, *args, **kwargs)
        finally:
            _DEPTH.reset(token)
        if batched:
            out = jtu.tree_map(
                lambda x: _snapshot(x) if _is_converted_state(x) else x,
                out,
                is_leaf=_is_converted_state,
            )
        return out

    return __call__


def _under_vmap(tree: Any) -> bool:
    if _BatchTracer is None:
        return False
    # Variables and States are not looked into: their refs are never batch tracers here.
    stop = lambda x: isinstance(x, (st.Variable, eqx.nn.State, st.Packed))
    return any(isinstance(x, _BatchTracer) for x in jtu.tree_leaves(tree, is_leaf=stop))


def _snapshot(state: Any) -> eqx.nn.State:
    values, keys = st.unbox(state).tree_flatten()
    return eqx.nn.State.tree_unflatten(keys, values)


def _rebuild(cls: type, attrs: dict[str, Any]) -> Any:
    obj = object.__new__(cls)
    for name, value in attrs.items():
        object.__setattr__(obj, name, value)
    return obj


def _convert(tree: Any, kind: type[st.Variable], path: tuple[Any, ...]) -> Any:
    """Arrays -> frozen Variables of ``kind`` (Param for inexact dtypes), modules ->
    converted subclasses, States -> MutableStates, throughout ``tree``."""

    def leaf(keypath: Any, x: Any) -> Any:
        where = (*path, *(_key(k) for k in keypath))
        if isinstance(x, st.Variable):  # a Variable the module holds already (an st.Rng)
            return x
        if isinstance(x, eqx.nn.State):
            values, keys = x.tree_flatten()
            values = tuple(_convert(v, st.BatchStat, where) for v in values)
            return MutableState.tree_unflatten(keys, values)
        if isinstance(x, eqx.Module):
            return _convert_module(x, where)
        if isinstance(x, _ARRAYS):
            inexact = jnp.issubdtype(x.dtype, jnp.inexact)
            return (kind if kind is not st.Param or inexact else st.Variable)(x, mutable=False)
        return x

    return jtu.tree_map_with_path(leaf, tree, is_leaf=_is_module_or_variable)


def _is_module_or_variable(x: Any) -> bool:
    return isinstance(x, (eqx.Module, eqx.nn.State, st.Variable))


def _key(k: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def _convert_module(module: eqx.Module, path: tuple[Any, ...]) -> eqx.Module:
    if type(module) is eqx.nn.StateIndex:  # eqx.nn.State checks its keys by exact type
        return module
    cls = _ORIGINAL.get(type(module), type(module))
    declared = {f.name: f.metadata.get("static", False) for f in dataclasses.fields(cls)}
    attrs = {}
    static = set()
    flags = set()
    for name, value in vars(module).items():
        if declared.get(name, True):  # static fields and non-field attributes: as they are
            attrs[name] = value
            continue
        if isinstance(value, (bool, np.bool_)):  # a flag: a node tree_at can replace
            flags.add(name)
            attrs[name] = _Flag(value)
            continue
        if isinstance(module, eqx.nn.Shared) and name == "pytree":
            new = _tie(module, _convert(module(), st.Param, (*path, name)))
        else:
            new = _mix(_convert(value, st.Param, (*path, name)))
        if not _has_data(new):
            # Only fields with leaves matter: None, () or an empty module pass jit as
            # they are (and StateIndex, which eqx.nn.State checks by exact type, stays).
            if jtu.tree_leaves(new):
                static.add(name)
        else:
            _check_no_static_leaves(new, (*path, name))
        attrs[name] = new
    # Equinox's own layers read their Variables' values when called (see `_reading`);
    # your modules see the Variables themselves, so they can write them in place.
    reads = cls.__module__.startswith("equinox.") and any(map(_is_variable, attrs.values()))
    target = _subclass(cls, frozenset(static), frozenset(flags), reads)
    return _rebuild(target, attrs)


def _check_no_static_leaves(value: Any, path: tuple[Any, ...]) -> None:
    leaves = jtu.tree_leaves_with_path(value, is_leaf=_is_variable)
    bad = [
        (*path, *(_key(k) for k in kp), type(x).__name__)
        for kp, x in leaves
        if not isinstance(x, (*_ARRAYS, st.Variable, jax.Ref))
    ]
    if bad:
        listed = ", ".join(f"{'.'.join(map(str, b[:-1]))} ({b[-1]})" for b in bad)
        raise st.StructureError(
            f"mutable(obj): the field at {'.'.join(map(str, path))} mixes arrays with "
            f"non-array values: {listed}. jax.jit cannot take non-array leaves, and a field "
            "is made static only as a whole. Move them into a field of their own, wrap a "
            "function in eqx.nn.Lambda, or declare them eqx.field(static=True)."
        )


def _tie(shared: eqx.nn.Shared, expanded: Any) -> Any:
    """The converted ``shared()`` with the Variables ``get`` selects put at the ``where``
    positions too: one Variable, reachable from both. A ``get`` that computes (e.g.
    transposes) cannot share storage; its positions keep a placeholder ``st.Cache`` (not
    trained), which ``Shared.__call__`` replaces by ``get(pytree)`` on every call."""
    ours = {id(v) for v in jtu.tree_leaves(expanded, is_leaf=_is_variable)}
    dest = jtu.tree_leaves(shared.where(expanded), is_leaf=_is_variable)
    got = jtu.tree_leaves(shared.get(expanded), is_leaf=_is_variable)
    if len(got) == len(dest) and all(_is_variable(v) and id(v) in ours for v in got):
        replace = {id(d): g for d, g in zip(dest, got, strict=True)}
    else:
        replace = {id(d): st.Cache(d.value, mutable=False) for d in dest}
    # Variables are leaves here, so tree_map keeps the very objects (and their sharing).
    return jtu.tree_map(lambda v: replace.get(id(v), v), expanded, is_leaf=_is_variable)


def _restore(tree: Any) -> Any:
    """Inverse of the structural part of :func:`_convert` on an unboxed tree."""

    def leaf(x: Any) -> Any:
        if isinstance(x, eqx.nn.State):
            values, keys = x.tree_flatten()
            return eqx.nn.State.tree_unflatten(keys, values)
        if isinstance(x, (_MixedList, _MixedTuple)):
            items = [_restore(item) for item in x]
            return items if isinstance(x, list) else tuple(items)
        if isinstance(x, eqx.Module):
            cls = _ORIGINAL.get(type(x), type(x))
            attrs = {k: _restore(_plain(v)) for k, v in vars(x).items()}
            obj = _rebuild(cls, attrs)
            if isinstance(obj, eqx.nn.Shared) and _has_data(obj.where(obj.pytree)):
                obj = eqx.nn.Shared(obj.pytree, obj.where, obj.get)
            return obj
        return x

    return jtu.tree_map(
        leaf,
        tree,
        is_leaf=lambda x: _is_module_or_state(x) or isinstance(x, (_MixedList, _MixedTuple)),
    )


def mutable(obj: T) -> T:
    """``obj`` (an ``eqx.Module``, ``eqx.nn.State``, or a tree of them) with every array
    in a mutable Variable; ``jax.jit`` & co. take the result directly.

    >>> import jax, equinox as eqx, statetree as st
    >>> from statetree.adapters import equinox as eqxst
    >>> model = eqxst.mutable(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
    >>> type(model.weight).__name__, model.weight.mutable, isinstance(model, eqx.nn.Linear)
    ('Param', True, True)
    """
    return st.mutable(_convert(obj, st.Param, ()))


def freeze(obj: T) -> T:
    """Plain Equinox again: modules of their original classes, ``eqx.nn.State``s, arrays
    (snapshots of the refs' current values), tied weights as ``eqx.nn.Shared`` has them.

    >>> import jax, equinox as eqx
    >>> from statetree.adapters import equinox as eqxst
    >>> linear = eqx.nn.Linear(2, 3, key=jax.random.key(0))
    >>> bool(eqx.tree_equal(eqxst.freeze(eqxst.mutable(linear)), linear))
    True
    """
    return _restore(st.unbox(obj))


def in_place(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` (called Equinox's way, ``fn(..., state) -> (..., state)``) so the state
    it returns is written into the converted state's refs, and the converted state itself
    is returned in its place.

    ``fn`` sees a plain ``eqx.nn.State`` snapshot, so it may be a ``jax.vmap`` of a
    stateful model (JAX refuses writes into unmapped refs inside ``vmap``); the commit
    happens after it returns, all entries checked before any is written. A packed state
    (``st.mutable(state, packed=True)``) works the same way::

        batched = in_place(jax.vmap(model, axis_name="batch", in_axes=(0, None),
                                    out_axes=(0, None)))
        out, state = batched(x, state)   # state's refs hold the new statistics
    """

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        converted: list[Any] = []

        def snapshot(x: Any) -> Any:
            if _is_converted_state(x):
                converted.append(x)
                values, keys = st.unbox(x).tree_flatten()
                return eqx.nn.State.tree_unflatten(keys, values)
            return x

        # Variables are leaves too: passed through as the same objects.
        args, kwargs = jtu.tree_map(
            snapshot,
            (args, kwargs),
            is_leaf=lambda x: _is_converted_state(x) or isinstance(x, st.Variable),
        )
        out = fn(*args, **kwargs)
        if not converted:
            return out
        return jtu.tree_map(
            lambda x: _commit(x, converted) if type(x) is eqx.nn.State else x,
            out,
            is_leaf=lambda x: isinstance(x, eqx.nn.State),
        )

    return wrapped


def _is_converted_state(x: Any) -> bool:
    """A MutableState, or a packed one (``st.mutable(state, packed=True)``)."""
    if isinstance(x, MutableState):
        return True
    return isinstance(x, st.Packed) and isinstance(st.unbox(x), MutableState)


def _commit(new: eqx.nn.State, converted: list[Any]) -> Any:
    """Write the returned State ``new`` into the converted state holding its entries."""
    values, keys = new.tree_flatten()
    owners = [s for s in converted if set(keys) <= set(s.tree_flatten()[1])]
    if len(owners) != 1:
        return new  # not a state we were given (or ambiguous): hand it back untouched
    owner = owners[0]
    entries = dict(zip(*reversed(owner.tree_flatten()), strict=True))
    flat: dict[tuple[Any, ...], Any] = {}
    for key, value in zip(keys, values, strict=True):
        pairs = _pairs(entries[key], value, f"in_place: the returned state's {key!r}")
        sub = st.state(entries[key])
        assert isinstance(sub, st.State)
        for p, (_, x) in zip(sub.paths(), pairs, strict=True):
            flat[(key, *p)] = x
    _update(owner, st.State(flat), "in_place: writing the returned state")
    return owner


# ----------------------------------------------------------------------------- files
def tree_serialise_leaves(path_or_file: Any, pytree: Any, **kwargs: Any) -> None:
    """``eqx.tree_serialise_leaves`` for converted models and states.

    Equinox's own function skips every ``jax.Ref`` (a mutable Variable's leaf is one), so
    on a converted model it writes nothing. This one writes :func:`freeze`'s plain
    Equinox tree: the file is the one pure Equinox writes for the same model, and loads
    into either form. ``kwargs`` go to Equinox (``filter_spec``, ``is_leaf``).
    """
    eqx.tree_serialise_leaves(path_or_file, freeze(pytree), **kwargs)


def tree_deserialise_leaves(path_or_file: Any, like: Any, **kwargs: Any) -> Any:
    """``eqx.tree_deserialise_leaves`` into a converted model or state, in place.

    The file is read into :func:`freeze`'s plain copy of ``like`` by Equinox, then every
    value is written into ``like``'s Variables at once (``st.update``: kinds, shapes and
    dtypes checked first; on error nothing changes). Returns ``like``, so Equinox's
    ``model = tree_deserialise_leaves(path, model)`` reads the same. Tied weights
    (``eqx.nn.Shared``) stay tied.
    """
    loaded = eqx.tree_deserialise_leaves(path_or_file, freeze(like), **kwargs)
    converted = _convert(loaded, st.Param, ())
    targets = st.state(like)
    assert isinstance(targets, st.State)
    values = st.state(converted)
    assert isinstance(values, st.State)
    found = dict(values.items())
    st.update(like, st.State({p: st.unbox(found[p]) for p in targets.paths()}))
    return like
