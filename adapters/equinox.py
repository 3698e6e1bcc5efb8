"""Equinox models under mutable-array semantics: ``mutable``, ``freeze``, ``in_place``.

``mutable(obj)`` turns an ``eqx.Module``, an ``eqx.nn.State`` or any tree of them into
the same tree with every array in a mutable Variable:

- arrays in modules become ``st.Param`` (inexact dtypes, trainable) or ``st.Variable``
  (integers, booleans); arrays in an ``eqx.nn.State`` become ``st.BatchStat`` (not
  differentiable: written under ``jax.grad`` without complaint);
- module fields that hold no arrays (activation functions, flags, strings) become
  *static* fields, so ``jax.jit``, ``jax.vmap`` and ``jax.lax.scan`` take the model
  directly. The converted module is an instance of a subclass of the original class
  that differs only in which fields are static: ``isinstance``, attribute reads and
  methods are the original's;
- an ``eqx.nn.State`` becomes a :class:`MutableState` (a subclass), whose ``set`` writes
  into the refs in place and returns the same object, so ``model(x, state)`` updates
  the state and the returned state may be ignored;
- tied weights (``eqx.nn.Shared``) become one Variable reachable from both positions.

``freeze(obj)`` is the inverse: plain Equinox modules and States holding arrays.

Inside ``jax.vmap`` JAX refuses writes into refs that are not mapped (the state is
``in_axes=None``), so a batched stateful call runs through :func:`in_place`, which calls
the function on a snapshot and commits the state it returns after the ``vmap``.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

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

__all__ = ["mutable", "freeze", "in_place", "MutableState"]

_ARRAYS = (jax.Array, np.ndarray, np.generic)


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

    def set(self, item: eqx.nn.StateIndex, value: Any) -> "MutableState":
        old = self.get(item)
        pairs = _pairs(old, value, f"MutableState.set({item.marker!r}, value)")
        if all(t.mutable for t, _ in pairs):
            _write(pairs)
            return self
        # Frozen Variables: the functional update Equinox does, minus the invalidation.
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
        pairs = [
            pair
            for key, value in zip(keys, values, strict=True)
            for pair in _pairs(mine[key], st.unbox(value), f"MutableState.update: {key!r}")
        ]
        _write(pairs)
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


def _write(pairs: list[tuple[st.Variable, Any]]) -> None:
    """Write each value into its Variable through statetree's one write path: all
    checked, then all written (NumPy's casting rules, as for ``v[...] = x``)."""
    targets = [target for target, _ in pairs]
    values = st.State({(i,): value for i, (_, value) in enumerate(pairs)})
    try:
        st.update(targets, values, exact=False)
    except Exception as e:
        if "unbatched array reference" not in str(e):
            raise
        raise st.VariableWriteError(
            "An Equinox stateful layer wrote its new state inside jax.vmap, but the "
            "state's refs are not mapped (in_axes=None) and JAX refuses writes of batched "
            "values into unmapped refs. Wrap the vmapped call so the state is committed "
            "after the vmap: statetree.adapters.equinox.in_place(jax.vmap(model, ...))"
            "(x, state)."
        ) from None


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


# ----------------------------------------------------------------------------- modules
# (original class, names of fields made static) -> subclass; subclass -> original.
_SUBCLASSES: dict[tuple[type, frozenset[str]], type] = {}
_ORIGINAL: dict[type, type] = {}


def _static_subclass(cls: type, names: frozenset[str], reads: bool) -> type:
    """``cls`` with the fields ``names`` declared static: same name, methods, fields.
    With ``reads``, ``__call__`` runs on the values of the module's own Variables."""
    key = (cls, names, reads)
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
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        annotations[f.name] = f.type
        kwargs: dict[str, Any] = {"init": f.init, "repr": f.repr}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        namespace[f.name] = dataclasses.field(metadata={**f.metadata, "static": True}, **kwargs)
    if reads:
        namespace["__call__"] = _reading(cls.__call__)
    sub = type(cls)(cls.__name__, (cls,), namespace)
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
        attrs = {k: v.value if isinstance(v, st.Variable) else v for k, v in vars(self).items()}
        return call(_rebuild(_ORIGINAL[type(self)], attrs), *args, **kwargs)

    return __call__


def _rebuild(cls: type, attrs: dict[str, Any]) -> Any:
    obj = object.__new__(cls)
    for name, value in attrs.items():
        object.__setattr__(obj, name, value)
    return obj


def _convert(tree: Any, kind: type[st.Variable], path: tuple[Any, ...]) -> Any:
    """Arrays -> frozen Variables of ``kind`` (Param for inexact dtypes), modules ->
    static-field subclasses, States -> MutableStates, throughout ``tree``."""

    def leaf(keypath: Any, x: Any) -> Any:
        where = (*path, *(_key(k) for k in keypath))
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

    return jtu.tree_map_with_path(leaf, tree, is_leaf=_is_module_or_state)


def _key(k: Any) -> Any:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def _convert_module(module: eqx.Module, path: tuple[Any, ...]) -> eqx.Module:
    cls = _ORIGINAL.get(type(module), type(module))
    declared = {f.name: f.metadata.get("static", False) for f in dataclasses.fields(cls)}
    attrs = {}
    static = set()
    for name, value in vars(module).items():
        if declared.get(name, True):  # static fields and non-field attributes: as they are
            attrs[name] = value
            continue
        if isinstance(module, eqx.nn.Shared) and name == "pytree":
            new = _tie(module, _convert(module(), st.Param, (*path, name)))
        else:
            new = _convert(value, st.Param, (*path, name))
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
    target = _static_subclass(cls, frozenset(static), reads) if static or reads else cls
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
        if isinstance(x, eqx.Module):
            cls = _ORIGINAL.get(type(x), type(x))
            attrs = {k: _restore(v) for k, v in vars(x).items()}
            obj = _rebuild(cls, attrs)
            if isinstance(obj, eqx.nn.Shared) and _has_data(obj.where(obj.pytree)):
                obj = eqx.nn.Shared(obj.pytree, obj.where, obj.get)
            return obj
        return x

    return jtu.tree_map(leaf, tree, is_leaf=_is_module_or_state)


def mutable(obj: Any) -> Any:
    """``obj`` (an ``eqx.Module``, ``eqx.nn.State``, or a tree of them) with every array
    in a mutable Variable; ``jax.jit`` & co. take the result directly.

    >>> import jax, equinox as eqx, statetree as st
    >>> from statetree.adapters import equinox as eqxst
    >>> model = eqxst.mutable(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
    >>> type(model.weight).__name__, model.weight.mutable, isinstance(model, eqx.nn.Linear)
    ('Param', True, True)
    """
    return st.mutable(_convert(obj, st.Param, ()))


def freeze(obj: Any) -> Any:
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
    happens after it returns::

        batched = in_place(jax.vmap(model, axis_name="batch", in_axes=(0, None),
                                    out_axes=(0, None)))
        out, state = batched(x, state)   # state's refs hold the new statistics
    """

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        converted: list[MutableState] = []

        def snapshot(x: Any) -> Any:
            if isinstance(x, MutableState):
                converted.append(x)
                values, keys = st.unbox(x).tree_flatten()
                return eqx.nn.State.tree_unflatten(keys, values)
            return x

        # Variables are leaves too: passed through as the same objects.
        args, kwargs = jtu.tree_map(
            snapshot, (args, kwargs), is_leaf=lambda x: isinstance(x, (MutableState, st.Variable))
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


def _commit(new: eqx.nn.State, converted: list[MutableState]) -> Any:
    """Write the returned State ``new`` into the converted state holding its entries."""
    values, keys = new.tree_flatten()
    owners = [s for s in converted if set(keys) <= set(s.tree_flatten()[1])]
    if len(owners) != 1:
        return new  # not a state we were given (or ambiguous): hand it back untouched
    owner = owners[0]
    entries = dict(zip(*reversed(owner.tree_flatten()), strict=True))
    targets = [jtu.tree_leaves(entries[k], is_leaf=_is_variable) for k in keys]
    news = [jtu.tree_leaves(v) for v in values]
    _write(
        [
            pair
            for group, vals in zip(targets, news, strict=True)
            for pair in zip(group, vals, strict=True)
        ]
    )
    return owner
