"""The adapter API for custom pytrees: ``st.register_node``.

A registered class is a pytree node JAX knows (so instances pass through ``jax.jit``),
and a node *with identity* statetree knows: an instance reached through two attributes is
one object again after ``st.split``/``st.merge`` and after ``st.mutable``.

Which attributes of an instance are data and which static is :mod:`._attrs`'s part;
this module keeps the registry, finds the nodes in a tree (:func:`flatten_to_nodes`) and
installs the JAX flatten of every node class. Subclasses of a registered class are
registered when defined.
"""

import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax.tree_util as jtu

from .._errors import StructureError, keystr
from .._variables import Variable
from . import _depth
from ._attrs import attrs_children, attrs_rebuild, know_nodes

__all__ = [
    "register_node",
    "register_internal_node",
    "flatten_to_nodes",
    "is_node",
    "node_children",
    "node_rebuild",
]

T = TypeVar("T", bound=type)


class _NodeClass(NamedTuple):
    """How statetree's traversal takes one registered class apart and back together:
    ``children(obj) -> (data, aux)`` with ``aux[0]`` the class, ``rebuild(aux, data)``."""

    children: Callable[[Any], tuple[Any, tuple[Any, ...]]]
    rebuild: Callable[[tuple[Any, ...], Any], Any]


# The one registry: every node class (users' through `register_node`, statetree's own
# `Packed` through `register_internal_node`) -> how to take it apart. `_TYPES` is its
# keys as a tuple, for `isinstance`. Both are replaced whole under `_LOCK`, never
# mutated in place, so readers need no lock.
_CLASSES: dict[type, _NodeClass] = {}
_TYPES: tuple[type, ...] = ()
_LOCK = threading.Lock()

_ATTRS = _NodeClass(attrs_children, attrs_rebuild)


def node_children(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """Split a registered node into ``(data, aux)``; aux is hashable, ``aux[0]`` its class."""
    return _CLASSES.get(type(obj), _ATTRS).children(obj)


def node_rebuild(aux: tuple[Any, ...], data: Any) -> Any:
    """Inverse of :func:`node_children`."""
    return _CLASSES.get(aux[0], _ATTRS).rebuild(aux, data)


def is_node(x: Any) -> bool:
    """Whether statetree's traversal expands ``x`` as a node (a registered class)."""
    return isinstance(x, _TYPES)


# ------------------------------------------------------------- finding the nodes
_is_variable = Variable.__instancecheck__  # a C-level bound method: cheap as `is_leaf`


def _is_graph_leaf(x: Any) -> bool:
    return isinstance(x, (Variable, _TYPES))


class _Watch(threading.local):
    """Per thread: what the node flattens this module installs have met.

    ``seen``: while the node-blind first pass of :func:`flatten_to_nodes` runs, the ids
    of the nodes it has flattened (None otherwise). ``site`` and ``met``: for JAX's own
    flattens (``jax.jit``, ``jax.tree.map``), the Python frame that started the current
    one and, per node id met in it, whether the node was checked for a cycle."""

    seen: set[int] | None = None
    site: int = 0
    met: dict[int, bool] | None = None


_WATCH = _Watch()
_CUT = (None, ())  # aux data of a node cut short; that flatten's result is discarded
_CYCLE = "statetree: a node inside itself"  # aux[0] of a node cut at a reference cycle


def flatten_to_nodes(tree: Any, *, nodes_expected: bool = False) -> tuple[list[Any], Any]:
    """``tree``'s leaves and treedef, the flatten cut at Variables and at registered
    nodes: the one question the traversal asks the registry.

    The cut at Variables alone is one C++ flatten with a C-level ``is_leaf``; cutting at
    nodes too needs a Python ``is_leaf`` (an ``isinstance`` against a tuple that grows
    with every registered class), several times slower per pytree node. So unless
    ``nodes_expected``, the first pass cuts at Variables only, while every node's JAX
    flatten (which this module installs) records the node in this thread's watch; when
    it recorded any, a second pass cuts at nodes. Trees without nodes pay one pass, and
    a program that registers classes costs its node-free trees nothing more.
    """
    saved = _depth.guard()
    if saved is None:  # the counter cannot be read here: walk the tree first
        _depth.check_depth(tree, _is_variable, _one_level)
    try:
        if nodes_expected:
            return _jax_flatten(tree, _is_graph_leaf, saved)
        if not _TYPES:
            return _jax_flatten(tree, _is_variable, saved)
        watch = _WATCH
        outer, watch.seen = watch.seen, set()
        try:
            leaves, treedef = _jax_flatten(tree, _is_variable, saved)
            met = bool(watch.seen)
        finally:
            watch.seen = outer
        if met:
            return _jax_flatten(tree, _is_graph_leaf, saved)
        return leaves, treedef
    except (RecursionError, SystemError):
        # Too deep for JAX's flatten (or cyclic): the counter is back (_jax_flatten);
        # say where (see _depth).
        error = _depth.too_deep(tree, _is_variable, saved, _one_level)
        if error is None:
            raise
        raise error from None


def _jax_flatten(tree: Any, is_leaf: Any, saved: Any) -> tuple[list[Any], Any]:
    """JAX's flatten of ``tree``; when it fails, the thread's recursion counter is put
    back (``saved``, from ``_depth.guard``) before anything else runs: JAX's failure
    leaves it spent, and even restoring ``_WATCH.seen`` in the caller's ``finally``
    needs it on Python 3.12+ (an attribute write there would fail, and leave the
    watch on)."""
    try:
        return jtu.tree_flatten(tree, is_leaf=is_leaf)
    except BaseException:
        if saved is not None:
            saved[0].value = saved[1]  # inline: no call before the counter is back
        raise


def _one_level(node: Any) -> list[tuple[Any, Any]] | None:
    """``node``'s children one level down, for the walks of ``_depth``: each level is a
    JAX flatten of its own, so no node counts as met again (and checked for a cycle by
    :func:`_cut`, a walk of its own) across levels."""
    _WATCH.met = None
    return _depth.children(node)


def _cut(obj: Any) -> Any:
    """None when JAX may expand ``obj``; else the aux data to cut it short with.

    In the node-blind first pass a node met again (shared, or in a cycle) is cut: that
    result is discarded, and the cut keeps the pass linear and finite. In JAX's own
    flattens, a node met again is checked once for a cycle; a cycle is cut with aux
    data that makes rebuilding the node raise ``StructureError``, naming the loop.
    Cutting rather than raising here matters: JAX's C++ flatten does not give back
    Python's recursion levels when a flatten function raises (see ``_depth``).
    """
    watch = _WATCH
    key = id(obj)
    seen = watch.seen
    if seen is not None:
        if key in seen:
            return _CUT
        seen.add(key)
        return None
    # Frames: 0 this, 1 the node's flatten, 2 whoever called JAX's flatten (C++ frames
    # between them are not Python frames).
    site = id(sys._getframe(2))
    met = watch.met
    if site != watch.site or met is None:
        watch.site, watch.met = site, {key: False}
        return None
    checked = met.get(key)
    if checked is None:
        met[key] = False
        return None
    if checked:
        return None
    loop = _loop_from(obj)
    if loop is None:
        met[key] = True
        return None
    return (_CYCLE, type(obj).__name__, keystr(loop)), ()


def _loop_from(obj: Any) -> tuple[Any, ...] | None:
    """The key path from node ``obj`` back to itself through nodes, or None (iterative:
    a long chain of nodes does not recurse)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(obj, ())]
    walked: set[int] = set()
    while stack:
        node, path = stack.pop()
        data, _ = node_children(node)
        keyed, _ = jtu.tree_flatten_with_path(data, is_leaf=_is_graph_leaf)
        for keys, child in keyed:
            if not is_node(child):
                continue
            here = path + tuple(keys)
            if child is obj:
                return here
            if id(child) not in walked:
                walked.add(id(child))
                stack.append((child, here))
    return None


def _flatten_with_keys(obj: Any) -> tuple[list[tuple[Any, Any]], Any]:
    cut = _cut(obj)
    if cut is not None:
        return [], cut
    data, aux = attrs_children(obj)  # JAX calls these for user classes only
    return [(jtu.GetAttrKey(k), v) for k, v in data.items()], (aux, tuple(data))


def _flatten(obj: Any) -> tuple[list[Any], Any]:
    cut = _cut(obj)
    if cut is not None:
        return [], cut
    data, aux = attrs_children(obj)
    return list(data.values()), (aux, tuple(data))


def _unflatten(aux_and_names: Any, children: Any) -> Any:
    aux, names = aux_and_names
    if aux is not None and aux[0] is _CYCLE:
        _, name, loop = aux
        raise StructureError(
            f"A {name} node contains itself (a reference cycle: it is reached again at "
            f"{loop} below itself). JAX flattens nodes recursively, which a cycle makes "
            "endless, and statetree rebuilds nodes from their children, which a cycle "
            "makes impossible; hold the back-reference outside the tree (e.g. a weakref)."
        )
    assert aux is not None  # only a cycle's marker carries no attributes
    return attrs_rebuild(aux, dict(zip(names, children, strict=True)))


def _add(cls: type, how: _NodeClass) -> None:
    """Enter ``cls`` in the registry (callers hold ``_LOCK``)."""
    global _CLASSES, _TYPES
    _CLASSES = {**_CLASSES, cls: how}
    _TYPES = (*_TYPES, cls)
    know_nodes(_TYPES)


def register_node(cls: T) -> T:
    """Make a user class take part in statetree and ``jax.jit`` as a node with identity.

    Usable as a class decorator. Works for plain classes with attributes and for
    dataclasses (frozen ones too); instances are rebuilt without calling ``__init__``.
    Attributes holding arrays, Variables, Refs or registered nodes (directly or inside
    lists, tuples, dicts or any other JAX pytree) are data; the others are static and
    part of the structure, and so are the items inside a data attribute that are not
    data (the ``jax.nn.relu`` in ``[Linear(...), jax.nn.relu, Linear(...)]``).
    Subclasses of ``cls`` are registered too, when defined.
    An instance reached through two paths is one object again after ``st.split`` /
    ``st.merge`` and after ``st.mutable`` / ``st.freeze``.

    Args:
      cls: the class to register.

    Returns:
      ``cls`` itself, registered as a pytree node.

    Raises:
      TypeError: ``cls`` is not a class, is a Variable kind, or has ``__slots__`` without
        ``__dict__``.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> @st.register_node
      ... class Linear:
      ...     def __init__(self, din, dout):
      ...         self.kernel = st.Param(jnp.zeros((din, dout)))
      ...         self.activation = "relu"       # static
      >>> graphdef, params = st.split(Linear(2, 3))
      >>> list(params.flat())
      [('kernel',)]

      Shared instances keep their identity:

      >>> layer = Linear(1, 1)
      >>> tied = st.mutable({"encoder": layer, "decoder": layer})
      >>> tied["encoder"] is tied["decoder"]
      True
      >>> @jax.jit
      ... def bump(graphdef, state):
      ...     model = st.merge(graphdef, state)
      ...     model["encoder"].kernel[...] += 1.0
      >>> bump(*st.split(tied))
      >>> tied["decoder"].kernel[...]
      Array([[1.]], dtype=float32)
    """
    node = cls  # returned as given: `isinstance` below narrows `cls` past its type T
    if not isinstance(cls, type):
        raise TypeError(
            f"register_node(cls): cls must be a class, got {cls!r}. Use it as a decorator "
            "on the class definition: @st.register_node."
        )
    if issubclass(cls, Variable):
        raise TypeError(
            f"register_node(cls): {cls.__name__} is a Variable kind; kinds are pytree "
            "nodes already. Register the class that holds Variables instead."
        )
    if cls.__dictoffset__ == 0:  # instances have no __dict__ (a class always has its own)
        raise TypeError(
            f"register_node(cls): {cls.__name__} uses __slots__ without __dict__; "
            "statetree reads a node's attributes from vars(obj). Drop __slots__ or add "
            "'__dict__' to it."
        )
    with _LOCK:
        if cls in _CLASSES:
            return node
        jtu.register_pytree_with_keys(cls, _flatten_with_keys, _unflatten, _flatten)
        _add(cls, _ATTRS)
    _register_subclasses(cls)
    return node


def _register_subclasses(cls: type) -> None:
    """Subclasses are nodes too: JAX registers exact types, so a subclass left out would
    be a leaf to ``jax.jit`` while statetree (``isinstance``) treats it as a node."""
    own = cls.__dict__.get("__init_subclass__")

    def __init_subclass__(sub: type, **kwargs: Any) -> None:
        if own is not None:
            own.__get__(None, sub)(**kwargs)
        else:
            super(cls, sub).__init_subclass__(**kwargs)
        register_node(sub)

    cls.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment]


def register_internal_node(
    cls: type,
    *,
    children: Callable[[Any], tuple[Any, tuple[Any, ...]]],
    rebuild: Callable[[tuple[Any, ...], Any], Any],
    flatten: Callable[[Any], tuple[Any, Any]],
    unflatten: Callable[[Any, Any], Any],
) -> None:
    """Register one of statetree's own classes (``Packed``) with JAX, with its own
    ``flatten``/``unflatten``, and with the traversal, which takes it apart with
    ``children(obj) -> (data, aux)`` (``aux[0]`` the class) and ``rebuild(aux, data)``.
    JAX's flatten of it is watched like a user node's (see :func:`flatten_to_nodes`).
    Registering again does nothing."""

    def watched(obj: Any) -> tuple[Any, Any]:
        if _WATCH.seen is not None and _cut(obj) is not None:
            return [], _CUT
        return flatten(obj)

    with _LOCK:
        if cls in _CLASSES:
            return
        jtu.register_pytree_node(cls, watched, unflatten)
        _add(cls, _NodeClass(children, rebuild))
