"""Converted modules under ``jax.vmap``: sensing it, and committing state after it.

JAX refuses two things inside ``jax.vmap`` that Equinox's stateful idioms do:

- returning a ref: Equinox's eval idiom ``jax.vmap(eqx.Partial(model, state=state))(xs)``
  returns the state. :func:`calling` wraps every converted module's ``__call__``; the
  outermost one called under ``vmap`` returns a snapshot (a plain ``eqx.nn.State`` of
  arrays) in place of a converted state. Nothing is lost: writes are refused there, so
  the refs hold what the snapshot holds.
- writing into a ref that is not mapped (the state is ``in_axes=None``), even a value
  that is the same for the whole batch. While the outermost converted module runs under
  ``vmap``, ``MutableState.set`` refuses with the fix, :func:`in_place`, which calls the
  function on a snapshot and commits the state it returns after the ``vmap``.

**Sensing vmap with public JAX.** :func:`under_vmap` hands the call's traced inputs to
a ``jax.custom_batching.custom_vmap`` function whose batching rule only records that it
ran: JAX runs that rule exactly when one of the inputs is batched by an enclosing
``vmap``. The inputs go through ``jax.lax.stop_gradient`` (``custom_vmap`` has no
derivative rule, and the probe's output is never used, so tracing drops it).
"""

import contextvars
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
from jax.core import Tracer
from jax.tree_util import tree_leaves as leaves

import statetree as st

from ._fields import hollow_error
from ._state import (
    WRITES_REFUSED,
    MutableState,
    entry_values,
    is_converted_state,
    snapshot,
    value_pairs,
    write,
)

# How deep the current thread is in calls of converted modules.
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("statetree_eqx_depth", default=0)
# Set by the probe's batching rule; read right after the probe is traced.
_BATCHED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "statetree_eqx_batched", default=None
)


@jax.custom_batching.custom_vmap
def _probe(leaves: list[Any]) -> list[Any]:
    return leaves


@_probe.def_vmap
def _probe_rule(
    axis_size: int, in_batched: list[Any], leaves: list[Any]
) -> tuple[list[Any], list[Any]]:
    seen = _BATCHED.get()
    if seen is not None:
        seen.append(True)
    return leaves, in_batched[0]


def under_vmap(tree: Any) -> bool:
    """True when a leaf of ``tree`` is batched by an enclosing ``jax.vmap``."""
    # Variables and States are not looked into: their refs are never batched here.
    stop = lambda x: isinstance(x, (st.Variable, eqx.nn.State, st.Packed))
    traced = [x for x in jtu.tree_leaves(tree, is_leaf=stop) if isinstance(x, Tracer)]
    if not traced:
        return False
    seen: list[bool] = []
    token = _BATCHED.set(seen)
    try:
        _probe([jax.lax.stop_gradient(x) for x in traced])
    finally:
        _BATCHED.reset(token)
    return bool(seen)


def calling(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` (a converted module's ``__call__``), aware of an enclosing ``vmap``."""

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A mutable Variable (a Ref, or a slice of a packed buffer) is never hollow: only
        # frozen ones are flattened to look (a packed one's flatten alone is refused).
        empty = [
            k
            for k, v in vars(self).items()
            if isinstance(v, st.Variable) and not v.mutable and not leaves(v)
        ]
        if empty:
            raise hollow_error(f"calling {type(self).__name__}", [f".{k}" for k in empty])
        depth = _DEPTH.get()
        # Checked before the call: a plain eqx.nn.State given in is invalid after it.
        batched = depth == 0 and under_vmap((args, kwargs))
        tokens = (_DEPTH.set(depth + 1), WRITES_REFUSED.set(True) if batched else None)
        try:
            out = call(self, *args, **kwargs)
        finally:
            if tokens[1] is not None:
                WRITES_REFUSED.reset(tokens[1])
            _DEPTH.reset(tokens[0])
        if batched:
            out = jtu.tree_map(
                lambda x: snapshot(x) if is_converted_state(x) else x,
                out,
                is_leaf=is_converted_state,
            )
        return out

    return __call__


def in_place(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` (called Equinox's way, ``fn(..., state) -> (..., state)``) so the state
    it returns is written into the converted state's refs, and the converted state itself
    is returned in its place.

    ``fn`` sees a plain ``eqx.nn.State`` snapshot, so it may be a ``jax.vmap`` of a
    stateful model (JAX refuses writes into unmapped refs inside ``vmap``); the commit
    happens after it returns, all entries checked before any is written. A packed state
    (``st.mutable(state, packed=True)``) works the same way::

        batched = in_place(jax.vmap(model, axis_name="batch", in_axes=(0, None),
                                    out_axes=(0, None)))
        out, state = batched(x, state)   # state's refs hold the new statistics
    """

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        converted: list[Any] = []

        def take(x: Any) -> Any:
            if is_converted_state(x):
                converted.append(x)
                return snapshot(x)
            return x

        # Variables are leaves too: passed through as the same objects.
        args, kwargs = jtu.tree_map(
            take,
            (args, kwargs),
            is_leaf=lambda x: is_converted_state(x) or isinstance(x, st.Variable),
        )
        out = fn(*args, **kwargs)
        if not converted:
            return out
        return jtu.tree_map(
            lambda x: _commit(x, converted) if type(x) is eqx.nn.State else x,
            out,
            is_leaf=lambda x: isinstance(x, eqx.nn.State),
        )

    return wrapped


def _commit(new: eqx.nn.State, converted: list[Any]) -> Any:
    """Write the returned State ``new`` into the converted state holding its entries."""
    values, keys = new.tree_flatten()
    owners = [s for s in converted if set(keys) <= set(s.tree_flatten()[1])]
    if len(owners) != 1:
        return new  # not a state we were given (or ambiguous): hand it back untouched
    owner = owners[0]
    unboxed = st.unbox(owner)
    assert isinstance(unboxed, MutableState)
    entries = dict(zip(*reversed(owner.tree_flatten()), strict=True))
    news: dict[tuple[Any, ...], Any] = {}
    for marker, value in zip(keys, values, strict=True):
        key = unboxed.path_key(marker)
        pairs = value_pairs(entries[marker], value, f"in_place: the returned state's {key!r}")
        news.update(entry_values(key, entries[marker], pairs).items())
    write(owner, st.State(news), "in_place: writing the returned state")
    return owner
