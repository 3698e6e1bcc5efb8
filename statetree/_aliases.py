"""Aliasing: several paths of one tree sharing one Variable or one ``jax.Ref``.

JAX refuses to pass one Ref twice into a jitted function ("only one reference to a
mutable array may be passed as an argument"). ``find_aliases`` names the paths before
that happens; ``st.split`` deduplicates them and ``st.merge`` restores them.
"""

from typing import Any

from . import _graph
from ._errors import AliasError, format_path
from ._graph import Path

__all__ = ["find_aliases", "check_aliases"]


def find_aliases(tree: Any) -> list[tuple[Path, ...]]:
    """Groups of paths that share one Variable or one Ref, in tree order.

    A registered node reached through two paths shows as its Variables, each under both.

    Args:
      tree: any pytree.

    Returns:
      One tuple of paths per shared Variable or Ref; empty when nothing is shared.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.zeros(()))
      >>> st.find_aliases({"a": v, "b": v, "c": st.Variable(jnp.zeros(()))})
      [(('a',), ('b',))]
      >>> ref = jax.new_ref(jnp.zeros(2))
      >>> st.find_aliases([ref, (ref,)])
      [((0,), (1, 0))]
    """
    graphdef, _ = _graph.flatten(tree)
    return [paths for paths in graphdef.occurrences() if len(paths) > 1]


def check_aliases(tree: Any) -> None:
    """Raise ``st.AliasError`` if any Variable or Ref appears at several paths.

    ``jax.jit`` refuses one mutable reference passed twice and names only the first pair
    it meets; this names every group, before tracing, with the fix: pass
    ``st.split(tree)`` and call ``st.merge`` inside the function.

    Args:
      tree: any pytree.

    Raises:
      AliasError: some Variable or Ref is reachable through several paths.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.zeros(()), mutable=True)
      >>> st.check_aliases({"a": v, "b": st.Variable(jnp.zeros(()))})  # nothing shared
      >>> st.check_aliases({"a": v, "b": v})
      Traceback (most recent call last):
        ...
      statetree._errors.AliasError: 1 Variable(s)/Ref(s) appear at several paths of this tree:
        ['a'] <-> ['b']
      jax.jit refuses ...
    """
    groups = find_aliases(tree)
    if not groups:
        return
    lines = [" <-> ".join(format_path(p) for p in group) for group in groups]
    raise AliasError(
        f"{len(groups)} Variable(s)/Ref(s) appear at several paths of this tree:\n  "
        + "\n  ".join(lines)
        + "\njax.jit refuses a tree like this when the Variables are mutable: one "
        "reference may be passed to a function only once. Pass st.split(tree) instead "
        "(it stores each shared value once) and call st.merge(graphdef, state) inside "
        "the function to restore the sharing."
    )
