"""statetree's exception classes.

Each refines the builtin that a caller would otherwise catch, so ``except ValueError``
keeps working, and all of them share :class:`StateTreeError` for ``except`` clauses that
want exactly ours.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax.tree_util as jtu

__all__ = [
    "StateTreeError",
    "FrozenVariableError",
    "VariableWriteError",
    "VariableIndexError",
    "UnreadableValueError",
    "RefValueError",
    "AliasError",
    "StructureError",
    "keystr",
    "format_path",
    "format_paths",
    "cut_lines",
    "Misfit",
    "misfit_report",
]


class StateTreeError(Exception):
    """Base class of every error statetree raises on purpose.

    Each subclass also refines a builtin (``TypeError`` or ``ValueError``), so either
    ``except`` clause catches it.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> try:
      ...     st.Variable(jnp.zeros(2), mutable=False)[...] = 1.0
      ... except st.StateTreeError as e:
      ...     print(type(e).__name__, isinstance(e, TypeError))
      FrozenVariableError True
    """


class FrozenVariableError(StateTreeError, TypeError):
    """A write to a frozen Variable (one that holds a plain ``jax.Array``).

    Inside ``jax.jit`` such a write would be lost when the call returns, so it is refused
    everywhere. Make the tree mutable first (``st.mutable(tree)``).

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.zeros(2), mutable=False)
      >>> v[...] = 1.0
      Traceback (most recent call last):
        ...
      statetree.FrozenVariableError: Cannot write into a frozen ...
    """


class VariableWriteError(StateTreeError, ValueError):
    """A write whose value does not fit the Variable: shapes that do not broadcast,
    a dtype that NumPy's ``same_kind`` casting rejects, or a Python int out of the
    dtype's range.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> count = st.Variable(jnp.zeros(3, dtype=jnp.int32), mutable=True)
      >>> count[...] = 0.5
      Traceback (most recent call last):
        ...
      statetree.VariableWriteError: ...a Python float into ...int32[3]: ...
      >>> count[...] = jnp.ones(2, dtype=jnp.int32)
      Traceback (most recent call last):
        ...
      statetree.VariableWriteError: ...shape (2,) into ...int32[3]: ...
    """


class VariableIndexError(StateTreeError, IndexError):
    """A static index that does not fit a Variable's shape (``v[5]`` on a 3-vector), in a
    read or a write, eagerly or inside ``jax.jit``. NumPy refuses such an index; JAX would
    clip the read and drop the write, silently.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.zeros(3), mutable=True)
      >>> v[5] = 1.0
      Traceback (most recent call last):
        ...
      statetree.VariableIndexError: Index 5 does not fit mutable Variable float32[3] ...
    """


class UnreadableValueError(StateTreeError, RuntimeError):
    """A value that cannot be read: an array deleted by donation (``donate_argnums``) or
    ``.delete()``, or a tracer that escaped its transform. Raised before anything is
    written or converted, naming the path or the Variable.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> x = jnp.ones(2)
      >>> x.delete()
      >>> st.mutable({"w": x})
      Traceback (most recent call last):
        ...
      statetree.UnreadableValueError: mutable: ...['w']...deleted...
    """


class RefValueError(StateTreeError, TypeError):
    """A ``jax.Ref`` (or a mutable Variable) where an array value is needed: written
    into a Variable, wrapped by ``Variable(...)``, or given to a JAX differentiation
    transform as a differentiated argument.

    ``jax.vjp``, ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian`` and ``jax.linearize`` raise
    this one when they meet a mutable Variable or a packed tree. ``jax.grad``,
    ``jax.value_and_grad`` and ``jax.jacrev`` raise it up to JAX 0.10; from JAX 0.11
    they refuse Ref arguments themselves, before statetree sees them, with a
    ``TypeError`` ("cannot differentiate with respect to a Ref-typed argument") that
    suggests ``jax.vjp(...).with_refs``. statetree does not take part in those Ref
    gradients; the fix is the same on every version: differentiate ``st.freeze(tree)``.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> st.Variable(jax.new_ref(jnp.zeros(2)))
      Traceback (most recent call last):
        ...
      statetree.RefValueError: Variable(value): value is a jax.Ref, ...
      >>> w = st.Param(jnp.ones(2), mutable=True)
      >>> jax.vjp(lambda w: jnp.sum(w[...] ** 2), w)
      Traceback (most recent call last):
        ...
      statetree.RefValueError: A mutable Param was passed as a differentiated argument ...
      >>> jax.grad(lambda w: jnp.sum(w[...] ** 2))(st.freeze(w))  # the fix
      Param(float32[2], mutable=False, value=[2., 2.])
    """


class AliasError(StateTreeError, ValueError):
    """Several paths of a tree share one Variable or one ``jax.Ref``.

    Raised by ``st.check_aliases``; the message lists every group of paths and the fix.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.zeros(()))
      >>> st.check_aliases([v, v])
      Traceback (most recent call last):
        ...
      statetree.AliasError: 1 Variable(s)/Ref(s) appear at several paths of this tree:
        [0] <-> [1]
      ...
    """


class StructureError(StateTreeError, ValueError):
    """States and a structure disagree: missing or extra paths, kinds, shapes, dtypes,
    or a Variable that no filter claims. The message names every offending path, and
    nothing is changed.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(2))}
      >>> st.split(tree, st.Param)
      Traceback (most recent call last):
        ...
      statetree.StructureError: No filter claims 1 value(s); ...
        ['n']
      Add a catch-all filter last: st.split(tree, ..., ...).
      >>> model = st.mutable(tree)
      >>> st.update(model, st.State({("w",): jnp.ones(3)}))
      Traceback (most recent call last):
        ...
      statetree.StructureError: update: 1 path(s) cannot be written; nothing was written:
        ['w']: expected float32[2], got float32[3]
    """


_KEY_ENTRIES = (jtu.DictKey, jtu.SequenceKey, jtu.GetAttrKey, jtu.FlattenedIndexKey)


def keystr(path: Sequence[object]) -> str:
    """A statetree path as text, the way ``jax.tree_util.keystr`` prints key paths.

    statetree paths are tuples of plain keys (``str`` for dict keys and attributes,
    ``int`` for sequence indices), as ``State.paths()``, ``st.find_aliases`` and error
    messages use them; JAX's own key entries (``DictKey``, ``SequenceKey``, ...) are
    accepted too. The empty path (the tree itself) is ``<root>``.

    Args:
      path: a tuple of plain keys (or of JAX key entries).

    Returns:
      The path as ``['layers'][0]['kernel']``.

    Examples:
      >>> import jax, statetree as st
      >>> st.keystr(("layers", 0, "kernel"))
      "['layers'][0]['kernel']"
      >>> st.keystr((jax.tree_util.GetAttrKey("weight"),))
      '.weight'
      >>> st.keystr(())
      '<root>'
    """
    keys = []
    for key in path:
        if isinstance(key, _KEY_ENTRIES):
            keys.append(key)
        elif isinstance(key, int):
            keys.append(jtu.SequenceKey(key))
        else:
            keys.append(jtu.DictKey(key))
    return jtu.keystr(tuple(keys)) or "<root>"


# The spelling used inside statetree.
format_path = keystr


def format_paths(paths: Sequence[Sequence[object]], limit: int = 20) -> str:
    """One path per line, indented; long lists are cut with a count of the rest."""
    return cut_lines([f"  {format_path(p)}" for p in paths], limit)


def cut_lines(lines: Sequence[str], limit: int) -> str:
    shown = list(lines[:limit])
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return "\n".join(shown)


class Misfit(NamedTuple):
    """One entry of a "does not fit" report: a path, what is wrong there (optional),
    and further paths the entry is about (two paths of one shared value)."""

    path: tuple[object, ...]
    detail: str = ""
    also: tuple[tuple[object, ...], ...] = ()
    sep: str = " and "  # between the paths, when there are several

    def line(self) -> str:
        where = self.sep.join(format_path(p) for p in (self.path, *self.also))
        return f"  {where}: {self.detail}" if self.detail else f"  {where}"


Section = tuple[str | None, Sequence[tuple[object, ...] | Misfit]]


def misfit_report(
    head: str, sections: Sequence[Section], fix: str = "", *, limit: int = 20
) -> str | None:
    """The one voice for "these paths do not fit": ``head``, then each non-empty
    section (its label, if any, then one indented line per path, long lists cut with a
    count of the rest), then ``fix``. None when every section is empty, so callers write
    ``if (message := misfit_report(...)): raise ...``.

    A section's entries are paths, or :class:`Misfit` entries for a path with a detail
    ("expected float32[2], got float32[3]")."""
    parts = [head]
    for label, entries in sections:
        if not entries:
            continue
        lines = [e.line() if isinstance(e, Misfit) else f"  {format_path(e)}" for e in entries]
        body = cut_lines(lines, limit)
        parts.append(f"{label}:\n{body}" if label else body)
    if len(parts) == 1:
        return None
    if fix:
        parts.append(fix)
    return "\n".join(parts)


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
for _cls in (
    StateTreeError,
    FrozenVariableError,
    VariableWriteError,
    VariableIndexError,
    UnreadableValueError,
    RefValueError,
    AliasError,
    StructureError,
):
    _cls.__module__ = "statetree"
