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
    "VariableIndexError",
    "UnreadableValueError",
    "RefValueError",
    "AliasError",
    "StructureError",
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
      statetree._errors.FrozenVariableError: Cannot write into a frozen ...
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
      statetree._errors.VariableWriteError: ...a Python float into ...int32[3]: ...
      >>> count[...] = jnp.ones(2, dtype=jnp.int32)
      Traceback (most recent call last):
        ...
      statetree._errors.VariableWriteError: ...shape (2,) into ...int32[3]: ...
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
      statetree._errors.VariableIndexError: Index 5 does not fit mutable Variable float32[3] ...
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
      statetree._errors.UnreadableValueError: mutable: ...['w']...deleted...
    """


class RefValueError(StateTreeError, TypeError):
    """A ``jax.Ref`` (or a mutable Variable) where an array value is needed: written
    into a Variable, wrapped by ``Variable(...)``, or differentiated by ``jax.grad``.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> st.Variable(jax.new_ref(jnp.zeros(2)))
      Traceback (most recent call last):
        ...
      statetree._errors.RefValueError: Variable(value): value is a jax.Ref, ...
      >>> w = st.Param(jnp.ones(2), mutable=True)
      >>> jax.grad(lambda w: jnp.sum(w[...] ** 2))(w)
      Traceback (most recent call last):
        ...
      statetree._errors.RefValueError: A mutable Param was passed to a JAX ... transform ...
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
      statetree._errors.AliasError: 1 Variable(s)/Ref(s) appear at several paths of this tree:
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
      statetree._errors.StructureError: No filter claims 1 value(s); ...
        ['n']
      Add a catch-all filter last: st.split(tree, ..., ...).
      >>> model = st.mutable(tree)
      >>> st.update(model, st.State({("w",): jnp.ones(3)}))
      Traceback (most recent call last):
        ...
      statetree._errors.StructureError: update: 1 path(s) cannot be written; nothing was written:
        ['w']: expected float32[2], got float32[3]
    """


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
