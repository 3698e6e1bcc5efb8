"""Trees too deep for JAX's flatten: refused with a path, the interpreter kept usable.

JAX's C++ flatten counts each level of a tree against Python's recursion limit. When the
limit is reached inside the ``is_leaf`` callback (which statetree's traversal passes),
the C++ exception that carries the ``RecursionError`` out skips the matching "leave"
of every level it unwinds: the thread's recursion counter stays near the limit, and
every later recursion in the process raises ``RecursionError``. Finding the depth first
would cost a Python walk of every tree on every split (measured: about as much as the
split itself), so statetree lets the C++ flatten fail, gives the counter back the
levels the failure took (CPython's public ``Py_LeaveRecursiveCall``, once per lost
level), and raises a ``StructureError`` naming the deepest path instead.
"""

import contextlib
import ctypes
import sys
from typing import Any

import jax.tree_util as jtu

from .._errors import StructureError, format_path

__all__ = ["leave", "recover", "too_deep"]

leave: Any = None  # CPython's Py_LeaveRecursiveCall; None elsewhere (nothing to give back)
try:
    leave = ctypes.pythonapi.Py_LeaveRecursiveCall
    leave.restype = None
    leave.argtypes = []
except (AttributeError, OSError):
    pass

# Levels to give back at once where the failure is caught, before any other call: the
# counter is then at the limit, and one call needs one level.
ROOM = 8


def _frames() -> int:
    frame, n = sys._getframe(1), 0
    while frame is not None:
        n, frame = n + 1, frame.f_back
    return n


def _headroom() -> int:
    """How many more Python calls this thread can make before ``RecursionError``."""
    depth = 0

    def down(k: int) -> None:
        nonlocal depth
        depth = k
        down(k + 1)

    with contextlib.suppress(RecursionError):
        down(0)
    return depth


def _slack() -> int:
    """``limit - frames - headroom`` in a healthy thread (a small constant)."""
    return sys.getrecursionlimit() - _frames() - _headroom()


_SLACK = _slack()


def recover() -> int:
    """Give this thread's recursion counter back the rest of the levels a failed C++
    flatten kept (the caller gave back ``ROOM`` already, inline); the number given."""
    if leave is None:
        return 0
    lost = sys.getrecursionlimit() - _frames() - _headroom() - _SLACK
    for _ in range(lost):
        leave()
    return max(lost, 0)


def _deepest(tree: Any, is_leaf: Any) -> tuple[Any, ...]:
    """The path to the deepest leaf, found without recursion (each object walked once,
    so a chain that loops ends)."""
    best: tuple[Any, ...] = ()
    stack: list[tuple[Any, tuple[Any, ...]]] = [(tree, ())]
    walked: set[int] = set()
    while stack:
        node, path = stack.pop()
        if len(path) > len(best):
            best = path
        if is_leaf(node) or id(node) in walked:
            continue
        walked.add(id(node))
        children, _ = jtu.tree_flatten_with_path(node, is_leaf=lambda x, n=node: x is not n)
        for keypath, child in children:
            if keypath:
                stack.append((child, path + tuple(keypath)))
    return best


def too_deep(tree: Any, is_leaf: Any) -> StructureError:
    """The error for a tree JAX's flatten could not walk (call after :func:`recover`)."""
    path = _deepest(tree, is_leaf)
    shown = format_path(path[:8]) + ("..." if len(path) > 8 else "")
    return StructureError(
        f"The tree is nested {len(path)} levels deep at {shown}, deeper than JAX's flatten "
        f"can walk under Python's recursion limit ({sys.getrecursionlimit()}); JAX would "
        "refuse it in jax.jit too. Flatten the nesting (a list of layers rather than each "
        "layer inside the previous one), or, if it is a chain of objects pointing at each "
        "other, hold the back-references outside the tree."
    )
