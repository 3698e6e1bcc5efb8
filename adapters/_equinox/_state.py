"""``MutableState``: an ``eqx.nn.State`` whose values live in mutable Variables.

Equinox's stateful layers call ``state.get(index)`` and ``state.set(index, value)`` and
return the state; :class:`MutableState` keeps Equinox's contract (``get`` gives arrays,
``set`` refuses a wrong structure, shape or dtype before changing anything) but ``set``
writes into the Variables in place and returns the same object, so the caller may ignore
the returned state.

Keys: ``eqx.nn.make_with_state`` names each entry by its key path (a string), while
``eqx.nn.State(model)`` keys them by ``object()`` markers. Paths of a state (in
``st.state``, ``st.update`` and every error) use the string, or for an ``object()`` marker
its position in the state, never the object (whose repr is a memory address).

One rule of JAX shapes this module: inside ``jax.vmap`` JAX refuses every write into a
ref that is not mapped. :data:`WRITES_REFUSED` is set while a converted module runs
under ``vmap`` (``_vmap.py`` sets it), and ``set`` then refuses before writing, naming
the fix (``in_place``).
"""

import contextvars
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

import statetree as st

from ._fields import is_variable

# True while a converted module runs under jax.vmap (see `_vmap.calling`).
WRITES_REFUSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "statetree_eqx_writes_refused", default=False
)

VMAP_WRITE = (
    "An Equinox stateful layer wrote its new state inside jax.vmap, but the state's refs "
    "are not mapped (in_axes=None), and JAX refuses every write into an unmapped ref "
    "inside vmap (even of a value that is the same for the whole batch). Wrap the vmapped "
    "call so the state is committed after the vmap returns: "
    "statetree.adapters.equinox.in_place(jax.vmap(model, ...))(x, state)."
)


class MutableState(eqx.nn.State):
    """An ``eqx.nn.State`` whose values live in mutable ``st.BatchStat`` Variables.

    ``get`` returns arrays; ``set`` writes into the Variables in place and returns this
    same object (the plain ``State`` returns a new one and invalidates itself). A State
    whose Variables were frozen (``st.freeze``) is updated functionally instead: ``set``
    returns a new ``MutableState``, as Equinox does.
    """

    def get(self, item: eqx.nn.StateIndex) -> Any:
        """The entry's current values as arrays, as ``eqx.nn.State.get`` gives them, so
        layers written Equinox's way (``cache.at[i].set(...)``, ``jax.lax`` calls) run
        unchanged. The Variables themselves are ``st.state(state)``'s values."""
        return st.unbox(super().get(item))

    def set(self, item: eqx.nn.StateIndex, value: Any) -> "MutableState":
        old = super().get(item)
        key = self.path_key(item.marker)
        where = f"MutableState.set({key!r}, value)"
        pairs = value_pairs(old, value, where)
        if all(t.mutable for t, _ in pairs):
            # One all-or-nothing write: st.update checks every leaf (kind, shape, dtype)
            # before it writes any, as Equinox's State.set refuses before changing anything.
            write(self, entry_values(key, old, pairs), where)
            return self
        # Frozen Variables: the functional update Equinox does, minus the invalidation.
        for target, leaf in pairs:
            if target.dtype != leaf.dtype:
                raise st.VariableWriteError(
                    f"{where}: a value of dtype {leaf.dtype} cannot replace the state's "
                    f"{target.dtype}. State entries keep their dtypes (as in Equinox); "
                    f"cast it first: value.astype({target.dtype})."
                )
        replaced = jtu.tree_unflatten(
            jtu.tree_structure(old, is_leaf=is_variable),
            [type(t)(x, mutable=False) for t, x in pairs],
        )
        entries = self.entries()
        entries[item.marker] = replaced
        return MutableState.tree_unflatten(tuple(entries), tuple(entries.values()))

    def substate(self, pytree: Any) -> "MutableState":
        values, keys = super().substate(pytree).tree_flatten()
        return MutableState.tree_unflatten(keys, values)

    def update(self, substate: eqx.nn.State) -> "MutableState":
        mine = self.entries()
        values, keys = substate.tree_flatten()
        missing = [_describe(k) for k in keys if k not in mine]
        if missing:
            raise st.StructureError(
                f"MutableState.update(substate): entries {missing} are not in this state. "
                "Pass a state made with state.substate(...) of this one."
            )
        # Check every entry before writing any: a bad substate changes nothing.
        news: dict[tuple[Any, ...], Any] = {}
        for marker, value in zip(keys, values, strict=True):
            key = self.path_key(marker)
            pairs = value_pairs(mine[marker], st.unbox(value), f"MutableState.update: {key!r}")
            news.update(entry_values(key, mine[marker], pairs).items())
        write(self, st.State(news), "MutableState.update(substate)")
        return self

    def entries(self) -> dict[Any, Any]:
        """Marker -> the entry's tree of Variables."""
        values, keys = self.tree_flatten()
        return dict(zip(keys, values, strict=True))

    def path_key(self, marker: Any) -> Any:
        """The element of a path that names the entry ``marker`` (see the module)."""
        if isinstance(marker, str):
            return marker
        return list(self.tree_flatten()[1]).index(marker)


def _describe(marker: Any) -> str:
    return marker if isinstance(marker, str) else f"<{type(marker).__name__} marker>"


def value_pairs(old: Any, value: Any, where: str) -> list[tuple[st.Variable, Any]]:
    """(Variable, new array) for each entry of ``old``; checks structure and shapes."""
    targets, structure = jtu.tree_flatten(old, is_leaf=is_variable)
    leaves, new_structure = jtu.tree_flatten(jtu.tree_map(jnp.asarray, value))
    if new_structure != structure:
        raise st.StructureError(
            f"{where}: value has structure {new_structure}, but the state holds "
            f"{structure}. Pass the same structure of arrays that state.get(index) returns."
        )
    for target, leaf in zip(targets, leaves, strict=True):
        if target.shape != leaf.shape:
            raise st.VariableWriteError(
                f"{where}: a value of shape {leaf.shape} cannot replace the state's "
                f"{target.shape}. State entries keep their shapes; compute the new value "
                "with the old shape."
            )
    return list(zip(targets, leaves, strict=True))


def entry_values(key: Any, old: Any, pairs: list[tuple[st.Variable, Any]]) -> st.State:
    """The new values of one entry as a State of the whole state's paths."""
    sub = st.state(old)
    assert isinstance(sub, st.State)
    return st.State({(key, *p): x for p, (_, x) in zip(sub.paths(), pairs, strict=True)})


def write(state: Any, news: st.State, where: str) -> None:
    """``st.update(state, news)``: all or nothing, refused under ``jax.vmap``."""
    if WRITES_REFUSED.get():
        raise st.VariableWriteError(VMAP_WRITE)
    try:
        st.update(state, news)
    except st.StructureError as e:
        raise st.StructureError(f"{where}: nothing was written.\n{e}") from None


def _state_with_keys(s: MutableState) -> tuple[list[tuple[Any, Any]], Any]:
    values, keys = s.tree_flatten()
    entries = [
        (jtu.DictKey(k) if isinstance(k, str) else jtu.FlattenedIndexKey(i), v)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    return entries, keys


jtu.register_pytree_with_keys(
    MutableState,
    _state_with_keys,
    lambda keys, values: MutableState.tree_unflatten(keys, tuple(values)),
    lambda s: s.tree_flatten(),
)


def is_converted_state(x: Any) -> bool:
    """A MutableState, or a packed one (``st.mutable(state, packed=True)``)."""
    if isinstance(x, MutableState):
        return True
    return isinstance(x, st.Packed) and isinstance(st.unbox(x), MutableState)


def snapshot(state: Any) -> eqx.nn.State:
    """A plain ``eqx.nn.State`` of the converted ``state``'s current values."""
    values, keys = st.unbox(state).tree_flatten()
    return eqx.nn.State.tree_unflatten(keys, values)
