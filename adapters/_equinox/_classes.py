"""The converted classes: a subclass of each module class, made once and cached.

A converted module is an instance of a subclass of its original class, with the same
name, fields and methods, so ``isinstance``, attribute reads and methods are the
original's. The subclass differs in three ways:

- fields that hold no data (functions, strings, numbers) are declared static, so
  ``jax.jit`` takes the model (:func:`subclass`);
- boolean fields keep their values as ``Flag`` nodes (a ``FlagField`` descriptor);
- its ``__call__`` is the original's wrapped in ``_vmap.calling``, and, for classes
  built on Equinox's layers, in :func:`reading`: the fields that an Equinox class
  declares are read to arrays before the call.

Why read: Equinox's layers hand their weights to ``jax.lax`` primitives
(``conv_general_dilated`` in ``Conv``), which JAX refuses for objects that are not arrays
("Triggering __jax_array__() during abstractification is no longer supported"), and
Equinox's layers are functional (they never write their fields). Which fields: those of
every Equinox class in the MRO, so a user's subclass of a layer (``class MyConv(
eqx.nn.Conv2d)``, with or without its own ``__call__`` calling ``super()``) reads the
layer's weights, while fields the user's subclass adds, and every field of a user's own
module, stay Variables that its code can write in place.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

import statetree as st

from ._fields import FlagField, is_variable, plain
from ._vmap import calling

# (original class, static fields, flag fields, read fields) -> subclass; subclass -> original.
_SUBCLASSES: dict[tuple[type, frozenset[str], frozenset[str], frozenset[str]], type] = {}
_ORIGINAL: dict[type, type] = {}


def original(cls: type) -> type:
    """The class a converted class was made from (``cls`` itself if not converted)."""
    return _ORIGINAL.get(cls, cls)


def is_converted(module: Any) -> bool:
    return type(module) in _ORIGINAL


def equinox_fields(cls: type) -> frozenset[str]:
    """The names of the fields that Equinox's own classes in ``cls``'s MRO declare."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == "equinox" and dataclasses.is_dataclass(base):
            names.update(vars(base).get("__annotations__", {}))
    return frozenset(names)


def subclass(
    cls: type, static: frozenset[str], flags: frozenset[str], reads: frozenset[str]
) -> type:
    """``cls`` with the fields ``static`` declared static and the bool fields ``flags``
    kept as ``Flag`` nodes: same name, methods and fields. Its ``__call__`` is the
    original's, seen through ``calling`` (and with ``reads``, :func:`reading`)."""
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
        if issubclass(cls, eqx.nn.Shared):
            call = _tying(call)
        namespace["__call__"] = calling(reading(call, reads) if reads else call)
    meta: Any = type(cls)  # Equinox's metaclass builds the dataclass
    sub = meta(cls.__name__, (cls,), namespace)
    for name in flags:
        type.__setattr__(sub, name, FlagField(name, defaults.get(name, dataclasses.MISSING)))
    _SUBCLASSES[key] = sub
    _ORIGINAL[sub] = cls
    return sub


def reading(call: Callable[..., Any], names: frozenset[str]) -> Callable[..., Any]:
    """``call`` run on a copy of the module whose fields ``names`` are read to arrays
    (the others as they are); submodules are left alone: each converted layer reads its
    own when it is called."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        attrs = {
            k: v.value if k in names and isinstance(v, st.Variable) else plain(v)
            for k, v in vars(self).items()
        }
        return call(rebuild(original(type(self)), attrs), *args, **kwargs)

    __call__.__name__ = getattr(call, "__name__", "__call__")
    __call__.__doc__ = getattr(call, "__doc__", None)
    __call__.__wrapped__ = call  # type: ignore[attr-defined]
    return __call__


def _tying(call: Callable[..., Any]) -> Callable[..., Any]:
    """``eqx.nn.Shared.__call__``, returning the module's own Variable objects.

    Equinox's ``Shared.__call__`` is an ``eqx.tree_at`` that puts ``get(pytree)`` at the
    ``where`` positions; ``tree_at`` rebuilds every node it passes, Variables included,
    so the kept position would get a new Variable around the same storage. Here every
    Variable of the result is swapped back for the module's own one holding the same
    leaf, so ``embedding.weight is linear.weight``, as Equinox's docstring promises."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        own = jtu.tree_leaves(self.pytree, is_leaf=is_variable)
        by_leaf = {id(leaf): v for v in own if is_variable(v) for leaf in jtu.tree_leaves(v)}

        def same(v: Any) -> Any:
            if not is_variable(v):
                return v
            leaves = jtu.tree_leaves(v)
            return by_leaf.get(id(leaves[0]), v) if len(leaves) == 1 else v

        return jtu.tree_map(same, call(self, *args, **kwargs), is_leaf=is_variable)

    __call__.__doc__ = getattr(call, "__doc__", None)
    return __call__


def rebuild(cls: type, attrs: dict[str, Any]) -> Any:
    """An instance of ``cls`` with exactly the attributes ``attrs`` (no ``__init__``)."""
    obj = object.__new__(cls)
    for name, value in attrs.items():
        object.__setattr__(obj, name, value)
    return obj


def is_module(x: Any) -> bool:
    return isinstance(x, eqx.Module)
