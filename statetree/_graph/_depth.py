"""Trees too deep for JAX's flatten, or cyclic: refused with a path, the interpreter kept
usable, on every supported Python.

JAX's C++ flatten spends one unit of CPython's per-thread recursion budget per level of
the tree (``Py_EnterRecursiveCall``): the budget Python calls share on 3.11, the separate
C-recursion budget on 3.12 and 3.13 (1,500 levels on 3.12, 10,000 on 3.13, whatever
``sys.getrecursionlimit()`` says). When the budget runs out, the next Python callback
(the ``is_leaf`` statetree passes, a node's flatten) raises, and the C++ exception that
carries the error out skips the matching "leave" of every level it unwinds: the
thread's budget stays spent, and every later recursion in the thread fails (3.11: any
deep-ish Python call; 3.12+: every C-level recursion, down to printing the traceback).

So :func:`guard` reads the budget before the flatten and, when the flatten fails, the
caller writes it back exactly as it was, before running anything else (even an
attribute write may need the budget on 3.12+); the failure is then turned into a
``StructureError`` naming the deepest path (or the loop, for a cyclic tree). Walking
the tree first to measure its depth would cost about as much as the split itself on
every call; reading the counter costs a few hundred nanoseconds.

The counter lives in CPython's ``PyThreadState`` (``Include/cpython/pystate.h``: public
header, layout fixed within a minor version). Its offset is known per minor version and
checked when this module is imported (:func:`_verified`): the recursion-limit field next
to it must equal ``sys.getrecursionlimit()``, and the counter must drop by at least one
per level while JAX flattens a nested list. On a Python where that check fails (a newer
minor version, another implementation), statetree walks the tree before handing it to
JAX (:func:`check_depth`) and refuses it there, before JAX recurses: slower, never unsafe.
"""

import ctypes
import sys
import threading
from typing import Any

import jax.tree_util as jtu

from .._errors import StructureError, format_path

__all__ = ["guard", "children", "check_depth", "too_deep"]

# Offset in PyThreadState of (the counter JAX's flatten spends, the recursion limit that
# sits beside it), for 64-bit CPython builds.
_OFFSETS = {
    (3, 11): (32, 36),  # recursion_remaining, recursion_limit
    (3, 12): (36, 32),  # c_recursion_remaining, py_recursion_limit
    (3, 13): (52, 48),  # c_recursion_remaining, py_recursion_limit
}

# Where the counter cannot be read: the deepest tree handed to JAX's flatten after the
# walk of check_depth (below JAX's own limit on every CPython: 3.11's default is 1,000
# Python frames in all, 3.12's 1,500 C levels).
FALLBACK_LEVELS = 900


class _Cell(threading.local):
    counter: Any = None  # this thread's counter, a ctypes.c_int over PyThreadState


_CELL = _Cell()
_offset: int | None = None


def _thread_counter() -> Any:
    """This thread's recursion counter as a ``ctypes.c_int`` (reads and writes go to
    CPython's thread state)."""
    assert _offset is not None
    state = ctypes.pythonapi.PyThreadState_Get()
    cell = _CELL.counter = ctypes.c_int.from_address(state + _offset)
    return cell


def guard() -> Any:
    """``(counter, value)``: the current thread's recursion counter (a ``ctypes.c_int``
    over CPython's thread state) and its value now, for the caller to write back, first
    thing, if the flatten that follows fails; None where it cannot be read (then call
    :func:`check_depth` first)."""
    if _offset is None:
        return None
    cell = _CELL.counter
    if cell is None:
        cell = _thread_counter()
    return (cell, cell.value)


def _verified() -> int | None:
    """The counter's offset for this interpreter, when the checks in the module docstring
    pass; None otherwise."""
    offsets = _OFFSETS.get(sys.version_info[:2])
    if offsets is None or sys.implementation.name != "cpython" or sys.maxsize < 2**32:
        return None
    counter_at, limit_at = offsets
    try:
        get = ctypes.pythonapi.PyThreadState_Get
        get.restype = ctypes.c_void_p
        get.argtypes = []
        state = get()
        limit = ctypes.c_int.from_address(state + limit_at).value
        counter = ctypes.c_int.from_address(state + counter_at)
        if limit != sys.getrecursionlimit() or counter.value <= 0:
            return None
        seen: list[int] = []

        def spy(x: Any) -> bool:
            if isinstance(x, int):  # the innermost leaf: record the counter there
                seen.append(counter.value)
            return False

        before = counter.value
        nested: Any = 0
        for _ in range(50):
            nested = [nested]
        jtu.tree_flatten(nested, is_leaf=spy)
        if counter.value != before or not seen or before - seen[0] < 50:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    return counter_at


_offset = _verified()


# ----------------------------------------------------------------- the walk and the error
class _Shape:
    """What :func:`_walk` found: the deepest path, and the first loop (a path that reaches
    an object again below itself), if any."""

    def __init__(self) -> None:
        self.deepest: tuple[Any, ...] = ()
        self.loop: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None  # (first, again)


def _path(link: Any) -> tuple[Any, ...]:
    keys = []
    while link is not None:
        key, link = link
        keys.extend(reversed(key))
    return tuple(reversed(keys))


def children(node: Any) -> list[tuple[Any, Any]] | None:
    """``node``'s ``(key path, child)`` pairs one level down (None for a leaf): JAX
    expands the root only, even when a child is the root itself (a cycle)."""
    calls = iter((False,))  # the root is expanded; every later call gets True

    def is_leaf(_: Any) -> bool:
        return next(calls, True)

    children, _ = jtu.tree_flatten_with_path(node, is_leaf=is_leaf)
    if len(children) == 1 and children[0][0] == () and children[0][1] is node:
        return None
    return children


def _walk(tree: Any, is_leaf: Any, expand: Any, stop: int | None = None) -> _Shape:
    """The tree's deepest path and first loop, found without recursion: each object is
    expanded once, one level at a time (``expand``: :func:`children`, or a caller's
    wrapper of it). With ``stop``, the walk ends at the first path longer than ``stop``
    levels."""
    shape = _Shape()
    best, best_depth = None, 0
    on_path: dict[int, Any] = {}  # id -> link to the path of each node being expanded
    done: set[int] = set()
    # (node, depth, link to its path, leaving): link = (key, parent link) or None.
    stack: list[tuple[Any, int, Any, bool]] = [(tree, 0, None, False)]
    while stack:
        node, depth, link, leaving = stack.pop()
        key = id(node)
        if leaving:
            del on_path[key]
            done.add(key)
            continue
        if depth > best_depth:
            best, best_depth = link, depth
            if stop is not None and depth > stop:
                break
        if key in on_path:
            shape.loop = (_path(on_path[key]), _path(link))
            break
        if key in done or is_leaf(node):
            continue
        below = expand(node)
        if below is None:
            continue  # a leaf to JAX
        on_path[key] = link
        stack.append((node, depth, link, True))
        for keypath, child in reversed(below):
            stack.append((child, depth + 1, (tuple(keypath), link), False))
    shape.deepest = _path(best)
    return shape


def _shown(path: tuple[Any, ...]) -> str:
    return format_path(path[:8]) + ("..." if len(path) > 8 else "")


_FIX = (
    "Flatten the nesting (a list of layers rather than each layer inside the previous "
    "one), or, if it is a chain of objects pointing at each other, hold the "
    "back-references outside the tree (e.g. a weakref)."
)


def _error(shape: _Shape, limit: str) -> StructureError:
    if shape.loop is not None:
        first, again = shape.loop
        return StructureError(
            f"The tree contains itself (a reference cycle): the object at "
            f"{_shown(first) if first else 'the root'} is reached again at "
            f"{_shown(again)}. JAX flattens trees recursively, which a "
            f"cycle makes endless (JAX would refuse it in jax.jit too). {_FIX}"
        )
    path = shape.deepest
    return StructureError(
        f"The tree is nested {len(path)} levels deep at {_shown(path)}, deeper than "
        f"JAX's flatten can walk ({limit}); JAX would refuse it in jax.jit too. {_FIX}"
    )


def too_deep(tree: Any, is_leaf: Any, saved: Any, expand: Any = children) -> StructureError | None:
    """The error for a tree JAX's flatten could not walk (call after writing back the
    counter of ``saved``): a cycle, or a path at least half as deep as the budget
    the flatten had. None when the tree is neither (the failure came from elsewhere,
    such as a node's own flatten: let it propagate)."""
    shape = _walk(tree, is_leaf, expand)
    budget = saved[1] if saved is not None else FALLBACK_LEVELS
    if shape.loop is None and len(shape.deepest) < budget // 2:
        return None
    return _error(shape, "Python's recursion budget ran out")


def check_depth(tree: Any, is_leaf: Any, expand: Any = children) -> None:
    """Where :func:`guard` cannot read the counter: refuse a tree deeper than
    ``FALLBACK_LEVELS`` (or cyclic) before JAX's flatten walks it."""
    shape = _walk(tree, is_leaf, expand, stop=FALLBACK_LEVELS)
    if shape.loop is not None or len(shape.deepest) > FALLBACK_LEVELS:
        raise _error(shape, f"statetree hands JAX at most {FALLBACK_LEVELS} levels here")
