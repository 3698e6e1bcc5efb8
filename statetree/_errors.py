"""statetree's exception classes.

Each refines the builtin that a caller would otherwise catch, so ``except ValueError``
keeps working, and all of them share :class:`StateTreeError` for ``except`` clauses that
want exactly ours.
"""

from collections.abc import Sequence

import jax.tree_util as jtu

__all__ = [
    "StateTreeError",
    "FrozenVariableError",
    "VariableWriteError",
    "RefValueError",
    "AliasError",
    "StructureError",
]


class StateTreeError(Exception):
    """Base class of every error statetree raises on purpose."""


class FrozenVariableError(StateTreeError, TypeError):
    """A write to a frozen Variable (one that holds a plain ``jax.Array``)."""


class VariableWriteError(StateTreeError, ValueError):
    """A write whose value does not fit the Variable: shapes that do not broadcast,
    or a dtype that NumPy's ``same_kind`` casting rejects."""


class RefValueError(StateTreeError, TypeError):
    """A ``jax.Ref`` (or a mutable Variable) where an array value is needed: written
    into a Variable, wrapped by ``Variable(...)``, or differentiated by ``jax.grad``."""


class AliasError(StateTreeError, ValueError):
    """Several paths of a tree share one Variable or one ``jax.Ref``."""


class StructureError(StateTreeError, ValueError):
    """States and a structure disagree: missing or extra paths, kinds, shapes, dtypes,
    or a Variable that no filter claims."""


def format_path(path: Sequence[object]) -> str:
    """``("layers", 0, "kernel")`` -> ``['layers'][0]['kernel']``: the key path as
    ``jax.tree_util.keystr`` prints it, so errors read like JAX's own."""
    keys = []
    for key in path:
        if isinstance(key, int):
            keys.append(jtu.SequenceKey(key))
        else:
            keys.append(jtu.DictKey(key))
    return jtu.keystr(tuple(keys)) or "<root>"


def format_paths(paths: Sequence[Sequence[object]], limit: int = 20) -> str:
    """One path per line, indented; long lists are cut with a count of the rest."""
    shown = [f"  {format_path(p)}" for p in paths[:limit]]
    if len(paths) > limit:
        shown.append(f"  ... and {len(paths) - limit} more")
    return "\n".join(shown)
