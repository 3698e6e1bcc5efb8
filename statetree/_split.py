"""``st.split``, ``st.merge``, ``st.state``, ``st.update`` and ``st.assign``.

``split`` separates a tree into its static structure (a GraphDef) and its values (one
State per filter); ``merge`` is the inverse. Eager split/merge copy nothing: the merged
tree holds the very Variables the States hold. Shared Variables and Refs are stored once
and come back as one object, so a write through one path is seen through the other.
"""

import itertools
import operator
from collections.abc import Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp

from . import _graph
from ._errors import Misfit, StructureError, misfit_report
from ._filters import bucket
from ._graph import GraphDef, Path
from ._state import State, StateKeys
from ._variables import Variable
from ._write import plan as _plan

__all__ = ["split", "merge", "state", "update", "write", "assign"]


def split(tree: Any, *filters: Any) -> tuple[Any, ...]:
    """``tree`` -> ``(graphdef, state, ...)``: one State per filter, or one of everything.

    The GraphDef holds the static structure; the States hold the values (Variables, raw
    Refs, bare arrays) keyed by path. A Variable or Ref at several paths appears once,
    under its first path; the GraphDef records the others, and ``st.merge`` restores
    the sharing. Eager split copies nothing: the States hold the tree's own Variables.

    Filters are tried in order and the first that matches claims a value. A filter is a
    class (``st.Param``; kind filters match Variables only), ``...`` (everything),
    ``st.PathContains(key)``, a predicate ``(path, value) -> bool``, or
    ``st.Any``/``st.All``/``st.Not`` of those.

    Args:
      tree: any pytree.
      *filters: one per State wanted. None: a single State of everything.

    Returns:
      ``(graphdef, state)`` with no filter, else ``(graphdef, state_1, ..., state_n)``.

    Raises:
      StructureError: some value is claimed by no filter (the error lists the paths;
        end with ``...`` to catch the rest).

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(()))}
      >>> graphdef, params, rest = st.split(tree, st.Param, ...)
      >>> list(params), list(rest)
      ([('w',)], [('n',)])

      A shared Variable is stored once:

      >>> v = st.Variable(jnp.zeros(()))
      >>> graphdef, state = st.split({"a": v, "b": v})
      >>> state
      State({
        ['a']: Variable float32[] frozen  (shared with ['b'])
      })
    """
    graphdef, values = _graph.flatten(tree)
    if not filters:
        keys = StateKeys(graphdef, range(len(values)))
        return graphdef, State._make(keys, values, trusted=True)
    buckets, _ = bucket(graphdef.paths, values, filters, require_all=True)
    states = [
        State._make(StateKeys(graphdef, tuple(b)), [values[i] for i in b], trusted=True)
        for b in buckets
    ]
    return (graphdef, *states)


@overload
def state(tree: Any, /) -> State: ...
@overload
def state(tree: Any, filter: Any, /) -> State: ...
@overload
def state(tree: Any, first: Any, second: Any, /, *filters: Any) -> tuple[State, ...]: ...
def state(tree: Any, *filters: Any) -> State | tuple[State, ...]:
    """The State of ``tree`` (one or no filter), or a tuple of States (several).

    Unlike ``st.split``, values that no filter claims are simply left out, and no
    GraphDef is returned. Use it to read values by path or to save them.

    Args:
      tree: any pytree.
      *filters: as for ``st.split``.

    Returns:
      One State with zero or one filter; a tuple of States, one per filter, with several.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> tree = {"w": st.Param(jnp.ones(2)), "n": st.BatchStat(jnp.zeros(()))}
      >>> st.state(tree, st.BatchStat)
      State({
        ['n']: BatchStat float32[] frozen
      })
    """
    graphdef, values = _graph.flatten(tree)
    if not filters:
        return State._make(StateKeys(graphdef, range(len(values))), values)
    buckets, _ = bucket(graphdef.paths, values, filters, require_all=False)
    states = tuple(
        State._make(StateKeys(graphdef, tuple(b)), [values[i] for i in b]) for b in buckets
    )
    return states[0] if len(states) == 1 else states


def _resolve(
    graphdef: GraphDef, states: Sequence[State], not_a_state: str, *, later_wins: bool
) -> tuple[dict[int, tuple[Path, Any]], list[Path], list[Misfit]]:
    """Each State value at its value index in ``graphdef``: ``{index: (path, value)}``,
    the paths ``graphdef`` lacks, and the values given twice. The same path given again
    in a later State wins when ``later_wins`` (``update``) and is given twice otherwise
    (``merge``); two paths of one shared value given two different objects always are:
    which one lands would depend on the order of the States."""
    chosen: dict[int, tuple[Path, Any]] = {}
    extra: list[Path] = []
    twice: list[Misfit] = []
    for s in states:
        if not isinstance(s, State):
            raise TypeError(not_a_state.format(type(s).__name__))
        positions = s._keys.positions_in(graphdef)
        for i, value, path in zip(positions, s._values, s.paths(), strict=True):
            if i is None:
                extra.append(path)
                continue
            before = chosen.get(i)
            if before is None or (later_wins and before[0] == path):
                chosen[i] = (path, value)
            elif before[0] == path or before[1] is not value:
                twice.append(_conflict(before[0], path))
    return chosen, extra, twice


def _gather(graphdef: GraphDef, states: Sequence[State], what: str) -> list[Any]:
    """Place every State's values at their value index in ``graphdef``; all or nothing."""
    n = graphdef.num_values
    if len(states) == 1 and isinstance(states[0], State):
        keys = states[0]._keys
        if keys.graphdef is graphdef and keys.indices == range(n):
            return states[0]._values
    placed = _by_index(graphdef, states)
    if placed is not None:
        return placed
    not_a_state = (
        what + ": expected States after the GraphDef, got {}. "
        "Pass the States that st.split returned, in any order."
    )
    chosen, extra, twice = _resolve(graphdef, states, not_a_state, later_wins=False)
    missing = [i for i in range(n) if i not in chosen]
    message = misfit_report(
        f"{what}: the States do not fit the GraphDef.",
        [
            ("missing (in the GraphDef, in no State)", [graphdef.paths()[i] for i in missing]),
            ("extra (in a State, not in the GraphDef)", extra),
            ("given twice", twice),
        ],
        "Pass exactly the States that st.split(tree, ...) returned with this GraphDef; a "
        "GraphDef from another structure does not fit.",
    )
    if message:
        raise StructureError(message)
    return [chosen[i][1] for i in range(n)]


_UNSET: Any = object()


def _by_index(graphdef: GraphDef, states: Sequence[State]) -> list[Any] | None:
    """The values of the States of one ``st.split`` placed by index, no path looked at;
    None unless each State comes from ``graphdef`` and together they hold each value once."""
    n = graphdef.num_values
    if not all(isinstance(s, State) and s._keys.graphdef is graphdef for s in states):
        return None
    if sum(len(s._values) for s in states) != n:
        return None
    out = [_UNSET] * n
    for s in states:
        for i, value in zip(s._keys.indices or (), s._values, strict=True):
            out[i] = value
    # A value given twice leaves another unset (found by identity: `in` would call `==`).
    return None if any(map(operator.is_, out, itertools.repeat(_UNSET))) else out


def _conflict(first: Path, second: Path) -> Misfit:
    """A value given twice: under one path, or two different values under two paths of
    one shared Variable or Ref."""
    if first == second:
        return Misfit(first, "given twice (in more than one State)")
    return Misfit(
        first,
        "two paths of one shared Variable, given two different values; give it one value, "
        "under one of them",
        also=(second,),
    )


def _check_kinds(graphdef: GraphDef, values: list[Any], what: str) -> None:
    kinds = graphdef.kinds
    if tuple(map(type, values)) == kinds:
        return
    wrong = []
    for i, (kind, value) in enumerate(zip(kinds, values, strict=True)):
        ok = not isinstance(value, Variable) if kind is None else type(value) is kind
        if not ok:
            expected = kind.__name__ if kind else "an array or Ref"
            wrong.append(
                Misfit(graphdef.paths()[i], f"expected {expected}, got {type(value).__name__}")
            )
    message = misfit_report(
        f"{what}: {len(wrong)} value(s) are of another kind than the GraphDef records:",
        [(None, wrong)],
        "Kinds are Variable classes; keep them when mapping over a State (jax.tree.map "
        "over a State keeps them).",
    )
    if message:
        raise StructureError(message)


def merge(graphdef: GraphDef, *states: State) -> Any:
    """Rebuild the tree from ``graphdef`` and the States ``split`` gave; the inverse of
    ``st.split``.

    Paths that shared a Variable receive the same object again, so a write through one is
    seen through the other (also inside ``jax.jit``). Eager merge copies nothing: the tree
    holds the States' own Variables.

    Args:
      graphdef: the GraphDef from ``st.split``.
      *states: the States from the same ``st.split``, in any order.

    Returns:
      The rebuilt tree.

    Raises:
      StructureError: the States miss paths the GraphDef has, have paths it lacks, give
        one value two different values (under one path, or under two paths of a shared
        Variable), or hold another kind than it records.
      TypeError: ``graphdef`` is not a GraphDef, or a later argument is not a State.

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> v = st.Variable(jnp.array(0), mutable=True)
      >>> graphdef, state = st.split({"a": v, "b": v})
      >>> @jax.jit
      ... def f(graphdef, state):
      ...     tree = st.merge(graphdef, state)
      ...     tree["a"][...] += 10          # seen through "b" too
      ...     return tree["b"][...]
      >>> int(f(graphdef, state)), int(v[...])
      (10, 10)
    """
    if not isinstance(graphdef, GraphDef):
        raise TypeError(
            f"merge(graphdef, *states): graphdef must be the GraphDef from st.split, got "
            f"{type(graphdef).__name__}."
        )
    values = _gather(graphdef, states, "merge")
    trusted = all(s._origin is s._values and s._keys.graphdef is graphdef for s in states)
    if not trusted:
        _check_kinds(graphdef, values, "merge")
    return _graph.unflatten(graphdef, values)


def update(tree: Any, *states: State, exact: bool = True) -> None:
    """Write the States' values into ``tree``'s Variables, in place.

    States may cover any subset of the tree's paths, under any path at which a shared
    Variable occurs. Every path must exist in the tree and match its kind, shape and
    dtype; otherwise nothing is written and the error names every offending path. Every
    value is checked (and must be readable: not a donated or deleted array, not an
    escaped tracer) before the first write. This is the one write path of statetree:
    ``v[...] = x``, ``Optimizer.update``, ``st.restore`` and the adapters write through
    the same checks.

    Args:
      tree: a live tree whose targets are mutable (Variables or raw Refs).
      *states: States keyed by the tree's paths (from ``st.state``, ``st.split``, or
        ``st.State({path: value})``).
      exact: True (default): each value must have its target's dtype and shape, so a
        State of another model never lands silently. False: NumPy's assignment rules,
        as for ``v[...] = x``: values broadcast to the target's shape, Python and NumPy
        scalars take its dtype (in range), other dtypes are cast when NumPy's
        ``same_kind`` casting allows it (a float into an int Variable does not).

    Raises:
      StructureError: a path is not in the tree, its kind, shape or dtype differ, the
        tree holds a frozen Variable or bare array there (make it mutable first), or two
        paths of one shared Variable are given different values.
      UnreadableValueError: every refused value is unreadable (a deleted or donated
        array, an escaped tracer); a mix of problems raises StructureError.
      VariableWriteError: with ``exact=False``, every refused value does not fit.
      TypeError: an argument after ``tree`` is not a State.

    Examples:
      >>> import jax.numpy as jnp, statetree as st
      >>> model = st.mutable({"w": jnp.zeros(2), "b": jnp.zeros(1)})
      >>> st.update(model, st.State({("w",): jnp.ones(2)}))
      >>> model["w"][...], model["b"][...]
      (Array([1., 1.], dtype=float32), Array([0.], dtype=float32))

      NumPy's rules instead of exact dtypes and shapes:

      >>> st.update(model, st.State({("b",): 3}), exact=False)
      >>> model["b"][...]
      Array([3.], dtype=float32)
    """
    graphdef, targets = _graph.flatten(tree)
    write(graphdef, targets, states, exact=exact)


def write(graphdef: GraphDef, targets: list[Any], states: Sequence[State], *, exact: bool) -> None:
    """``update`` of the tree that ``_graph.flatten`` turned into ``graphdef`` and
    ``targets`` (for callers that flatten the tree once for several purposes)."""
    not_a_state = (
        "update(tree, *states): expected States, got {}. Build one with st.state(tree) "
        "or st.State({{path: value}})."
    )
    chosen, extra, twice = _resolve(graphdef, states, not_a_state, later_wins=True)
    # Paths are looked up only to name a refused write (they cost a walk of the tree).
    plan = _plan.WritePlan("update", exact=exact, where=lambda i: graphdef.paths()[i])
    for path in extra:
        plan.refuse(None, StructureError(Misfit(path, "not in the tree (extra path)").line()[2:]))
    for conflict in twice:
        plan.refuse(None, StructureError(conflict.line()[2:]))
    positions = list(chosen)
    news = [new for _, new in chosen.values()]
    plan.add_all([targets[i] for i in positions], news, positions)
    plan.commit()  # all or nothing; packed views: one write per buffer


def _scalar_array(x: Any) -> Any:
    return jnp.asarray(x) if isinstance(x, (bool, int, float, complex)) else x


def assign(tree: Any, values: Any) -> None:
    """Write ``values``, a tree shaped like ``st.unbox(tree)``, into ``tree``'s Variables
    in place: ``v[...] = new`` for every Variable, with the same checks (NumPy's rules),
    all made before the first write. A Variable at several paths takes the value at its
    last path, as a loop over the paths would leave it.

    Inside ``jax.jit`` on a packed tree, every buffer mostly written in small slots takes
    *one* write of its whole new value, where a loop of ``v[...] = new`` writes one slot
    at a time, an update kernel each (docs/packed.md shows what each costs). On the
    default form each Variable is written as by the loop.

    Args:
      tree: a live tree whose Variables (or raw Refs) are mutable, packed or not.
      values: a tree of the structure of ``st.unbox(tree)`` (e.g. ``jax.tree.map`` over
        it), holding one array (or Python scalar) per Variable.

    Raises:
      StructureError: ``values`` has paths ``tree`` lacks or lacks some it has, or the
        tree holds a frozen Variable or bare array at a path.
      VariableWriteError: a value does not fit its Variable's shape or dtype.
      UnreadableValueError: a value is unreadable (a deleted array, an escaped tracer).

    Examples:
      >>> import jax, jax.numpy as jnp, statetree as st
      >>> ema = st.mutable({"w": jnp.zeros(2), "b": jnp.zeros(1)}, packed=True)
      >>> @jax.jit
      ... def step(ema, x):
      ...     st.assign(ema, jax.tree.map(lambda e: 0.9 * e + 0.1 * x, st.unbox(ema)))
      >>> step(ema, 1.0)
      >>> ema["w"][...]
      Array([0.1, 0.1], dtype=float32)
    """
    graphdef, targets = _graph.flatten(tree)
    # Python scalars are values here (weakly typed: they take the Variable's dtype).
    values = jax.tree.map(_scalar_array, values, is_leaf=lambda x: isinstance(x, Variable))
    new_def, news = _graph.flatten(values)
    chosen: dict[int, Any] = {}
    extra: list[Path] = []
    for paths, new in zip(new_def.occurrences(), news, strict=True):
        for path in paths:
            i = graphdef.find(path)
            if i is None:
                extra.append(path)
            else:
                chosen.pop(i, None)  # a later path of a shared Variable: the later wins
                chosen[i] = new
    missing = [graphdef.paths()[i] for i in range(len(targets)) if i not in chosen]
    message = misfit_report(
        "assign(tree, values): values is not shaped like st.unbox(tree).",
        [
            ("missing (a Variable of the tree with no value)", missing),
            ("extra (a value at a path the tree lacks)", extra),
        ],
        "Build values from the tree itself, e.g. jax.tree.map(f, st.unbox(tree)), or "
        "write a subset with st.update(tree, st.State({path: value})).",
    )
    if message:
        raise StructureError(message)
    plan = _plan.WritePlan("assign", where=lambda i: graphdef.paths()[i])
    positions = list(chosen)
    plan.add_all([targets[i] for i in positions], list(chosen.values()), positions)
    plan.commit()  # all or nothing; packed views: one write per buffer
