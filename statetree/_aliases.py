"""Aliasing: several paths of one tree sharing one Variable or one ``jax.Ref``.

JAX refuses to pass one Ref twice into a jitted function ("only one reference to a
mutable array may be passed as an argument"). ``find_aliases`` names the paths before
that happens; ``st.split`` deduplicates them and ``st.merge`` restores them.
"""

from typing import Any

from . import _graph
from ._errors import AliasError, format_path
from ._graph import Path
from ._variables import Variable, raw_of
from ._write import storage as _storage

__all__ = ["find_aliases", "check_aliases", "alias_groups"]


def find_aliases(tree: Any) -> list[tuple[Path, ...]]:
    """Groups of paths that share one Variable or one Ref, in tree order.

    A registered node reached through two paths shows as its Variables, each under both.
    Two distinct Variables around one ``jax.Ref`` (the pair ``eqx.nn.Shared`` hands out,
    or ``jax.tree.map(lambda x: x, v)`` of a mutable ``v``) are one group: ``jax.jit``
    refuses them together as it refuses one Variable twice.

    A node reached through many paths (shared at every level of a diamond: 2^depth
    paths) is expanded at most 8 times, so this stays linear in the number of distinct
    nodes: a Variable inside it lists 8 of its paths or more, not all of them
    (``st.split(tree)[0].find(path)`` resolves any of them).

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
    return alias_groups(*_graph.flatten(tree))


def alias_groups(graphdef: _graph.GraphDef, values: list[Any]) -> list[tuple[Path, ...]]:
    """``find_aliases`` of the tree that ``_graph.flatten`` turned into ``graphdef`` and
    ``values`` (for callers that flatten the tree once for several purposes)."""
    occurrences = graphdef.occurrences()
    # Values that hold one Ref are one group too: two Variables of different kinds
    # around one Ref, or a Variable and the raw Ref (`flatten` already merges
    # same-kind twins into one value).
    by_storage: dict[int, list[int]] = {}
    for i, value in enumerate(values):
        raw = raw_of(value) if isinstance(value, Variable) else value
        if _storage.is_storage(raw):
            by_storage.setdefault(id(raw), []).append(i)
    first_of = {i: group[0] for group in by_storage.values() for i in group}
    groups: dict[int, list[Path]] = {}
    for i, paths in enumerate(occurrences):
        groups.setdefault(first_of.get(i, i), []).extend(paths)
    return [tuple(paths) for paths in groups.values() if len(paths) > 1]


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
      statetree.AliasError: 1 Variable(s)/Ref(s) appear at several paths of this tree:
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
