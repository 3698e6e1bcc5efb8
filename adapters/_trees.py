"""Plain dict/list trees in mutable Variables, and the checked write-back that the bound
functions of :mod:`statetree.adapters.dicts` share: all or nothing, errors naming paths.

Public ``statetree`` names only.
"""

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np

import statetree as st

__all__ = ["mutable", "freeze", "assign", "require_mutable", "unpack", "check_kind"]

_ARRAYS = (jax.Array, np.ndarray, np.generic)
T = TypeVar("T")  # mutable/freeze return the type they are given


def _is_variable(x: Any) -> bool:
    return isinstance(x, st.Variable)


def _paths_block(paths: Sequence[tuple[Any, ...]], prefix: tuple[Any, ...] = ()) -> str:
    shown = [f"  {st.keystr(prefix + p)}" for p in paths[:20]]
    if len(paths) > 20:
        shown.append(f"  ... and {len(paths) - 20} more")
    return "\n".join(shown)


def check_kind(kind: Any, where: str) -> None:
    if not (isinstance(kind, type) and issubclass(kind, st.Variable)):
        raise TypeError(
            f"{where}: a kind must be a Variable class such as st.Param, st.BatchStat or "
            f"st.Cache (or your own subclass of st.Variable); got {kind!r}."
        )


# ---------------------------------------------------------------------------- plain trees
def mutable(tree: T, kind: type = st.Param) -> T:
    """The tree with every array leaf in a new mutable ``kind`` Variable.

    Args:
      tree: a nested dict/list of arrays (any pytree works; registered nodes are
        rebuilt, so use ``st.mutable`` for trees of those).
      kind: the Variable class for the arrays; ``st.Param`` by default.

    Returns:
      A new tree: arrays became mutable ``kind`` Variables, Variables already there keep
      their kind and are made mutable (sharing kept), non-array leaves (ints, strings,
      None) are left alone. The input is not modified.

    Raises:
      TypeError: ``kind`` is not a subclass of ``st.Variable``.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> from statetree.adapters import dicts
      >>> params = dicts.mutable({"dense": {"kernel": jnp.ones((2, 3))}, "s": [jnp.ones(3)]})
      >>> params["dense"]["kernel"]
      Param(float32[2,3], mutable=True, value=...)
      >>> dicts.freeze(params)["s"]
      [Array([1., 1., 1.], dtype=float32)]
    """
    check_kind(kind, "dicts.mutable(tree, kind=...)")

    def box(x: Any) -> Any:
        return kind(x, mutable=True) if isinstance(x, _ARRAYS) else x

    return st.mutable(jax.tree.map(box, tree, is_leaf=_is_variable))


def freeze(tree: T) -> T:
    """The tree with every Variable replaced by its current array (``st.unbox``).

    Args:
      tree: a tree made by :func:`mutable`, :func:`from_collections` or
        :func:`from_haiku` (any pytree works).

    Returns:
      A plain dict/list tree of arrays again, as the functional code that made it expects.

    Examples:
      >>> import jax.numpy as jnp
      >>> from statetree.adapters import dicts
      >>> dicts.freeze(dicts.mutable({"w": jnp.zeros(2), "act": "gelu"}))
      {'act': 'gelu', 'w': Array([0., 0.], dtype=float32)}
    """
    return st.unbox(tree)


def require_mutable(tree: Any, where: str, prefix: tuple[Any, ...], fix: str) -> None:
    """Every value in ``tree`` must be a mutable Variable (or Ref): it is written in place."""
    bad = []
    for path, value in st.state(tree).items():
        if not st.is_mutable(value):
            what = f"a frozen {type(value).__name__}" if _is_variable(value) else "a bare array"
            bad.append(f"  {st.keystr(prefix + path)}: {what}")
    if bad:
        raise st.StructureError(
            f"{where} must hold mutable Variables, because the updated values are written "
            "into them in place (a bare array has no storage to write to, and a write into "
            f"a frozen Variable would be lost after jax.jit). These do not:\n"
            + "\n".join(bad[:20])
            + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            + f"\n{fix}"
        )


def assign(targets: Any, new: Any, who: str, prefix: tuple[Any, ...]) -> None:
    """Write ``new`` (a tree of arrays) into the mutable Variables of ``targets``, all
    or nothing; errors name every path that does not fit."""
    have = st.state(targets).paths()
    got = st.state(new)
    have_set, got_set = set(have), set(got.paths())
    missing = [p for p in have if p not in got_set]
    extra = [p for p in got.paths() if p not in have_set]
    if missing or extra:
        problems = []
        if missing:
            problems.append("missing (held here, not returned):\n" + _paths_block(missing, prefix))
        if extra:
            problems.append(
                "extra (returned, not held here):\n"
                + _paths_block(extra, prefix)
                + "\n  (a Python number or None in the tree is not a Variable and cannot be "
                "updated: store an array there, e.g. jnp.zeros((), jnp.int32))"
            )
        raise st.StructureError(
            f"{who} do not have the structure of the Variables they update; nothing was "
            "written.\n" + "\n".join(problems) + "\napply_fn must return each updated "
            "collection whole, with the same keys, as it received it."
        )
    try:
        st.update(targets, got)
    except st.StructureError as e:
        raise st.StructureError(
            f"{who} do not fit the Variables they update (paths below are relative to "
            f"{st.keystr(prefix)}); nothing was written.\n{e}"
        ) from None


def unpack(result: Any, who: str, expected: str) -> tuple[Any, Any]:
    if not (isinstance(result, tuple) and len(result) == 2):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise st.StructureError(
            f"{who} must return {expected}; it returned {got}. Check that apply_fn is "
            "the function that returns the updated state as well as the output."
        )
    return result
