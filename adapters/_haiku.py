"""Haiku-style ``apply(params, state, rng, *args) -> (out, new_state)`` with its state
in mutable Variables written in place. Public ``statetree`` names only.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import statetree as st

from ._rngs import draw_key
from ._trees import assign, mutable, require_mutable, unpack

__all__ = ["from_haiku", "bind_haiku", "BoundHaiku"]

P = TypeVar("P")
S = TypeVar("S")


def from_haiku(params: P, state: S) -> tuple[P, S]:
    """Haiku's ``(params, state)`` as mutable Variables.

    Args:
      params: Haiku's params, ``{module_name: {name: array}}``.
      state: Haiku's state, of the same form.

    Returns:
      ``(params, state)``: the params as ``st.Param``s, the state as ``st.BatchStat``s
      (Haiku state is never differentiated, so it takes a non-differentiable kind).

    Examples:
      >>> import jax.numpy as jnp
      >>> from statetree.adapters import dicts
      >>> params, state = dicts.from_haiku({"w": jnp.ones(2)}, {"bn": {"m": jnp.zeros(2)}})
      >>> state["bn"]["m"]
      BatchStat(float32[2], mutable=True, value=[0., 0.])
    """
    return mutable(params, kind=st.Param), mutable(state, kind=st.BatchStat)


@st.register_node
class BoundHaiku:
    """A Haiku-style ``apply_fn`` bound to params and state; made by :func:`bind_haiku`.

    ``f(rng, *args, **kwargs)`` runs ``apply_fn(params, state, rng, *args, **kwargs)``
    on the current values, writes the new state into the state's Variables in place and
    returns the output alone. ``rng`` may be an ``st.Rng`` (or ``st.Rngs``, its default
    stream): ``apply_fn`` gets a fresh key drawn from it, the stream advanced in place.

    Attributes:
      apply_fn: the bound function.
      params: the params tree (mutable Variables, or frozen ones inside a loss).
      state: the state tree of mutable Variables, written after each call.
    """

    apply_fn: Callable[..., Any]
    params: Any
    state: Any

    def __init__(self, apply_fn: Callable[..., Any], params: Any, state: Any) -> None:
        if not callable(apply_fn):
            raise TypeError(
                f"bind_haiku(apply_fn, params, state): apply_fn must be callable, e.g. "
                f"the apply of hk.transform_with_state; got {type(apply_fn).__name__}."
            )
        require_mutable(
            state,
            "bind_haiku(state=...): the state",
            ("state",),
            "Convert it first: params, state = dicts.from_haiku(params, state).",
        )
        self.apply_fn = apply_fn
        self.params = params
        self.state = state

    def __call__(self, rng: Any, *args: Any, **kwargs: Any) -> Any:
        rng = draw_key(rng)  # an st.Rng (or st.Rngs) gives a fresh key, advancing in place
        result = self.apply_fn(st.unbox(self.params), st.unbox(self.state), rng, *args, **kwargs)
        out, new_state = unpack(result, "apply_fn", "(out, new_state)")
        assign(self.state, new_state, "apply_fn's new state", ("state",))
        return out

    def replace(self, *, params: Any = None, state: Any = None) -> "BoundHaiku":
        """A new bound function with ``params`` and/or ``state`` replaced.

        Args:
          params: new params, e.g. frozen ones inside a loss under ``jax.grad``.
          state: new state (mutable Variables).

        Returns:
          A new :class:`BoundHaiku` with the same ``apply_fn``.
        """
        return BoundHaiku(
            self.apply_fn,
            self.params if params is None else params,
            self.state if state is None else state,
        )

    def __repr__(self) -> str:
        fn = getattr(self.apply_fn, "__qualname__", repr(self.apply_fn))
        return (
            f"BoundHaiku({fn}, {len(st.state(self.params))} params, "
            f"{len(st.state(self.state))} state values)"
        )


def bind_haiku(apply_fn: Callable[..., Any], params: Any, state: Any) -> BoundHaiku:
    """Bind a Haiku-style ``apply_fn(params, state, rng, *args) -> (out, new_state)``.

    Args:
      apply_fn: e.g. the ``apply`` of ``hk.transform_with_state``.
      params: mutable Variables, or frozen ones inside a loss under ``jax.grad``.
      state: mutable Variables (see :func:`from_haiku`): the new state is written there.

    Returns:
      ``f(rng, *args, **kwargs) -> out``, a :class:`BoundHaiku` (a registered node that
      ``jax.jit`` takes as an argument).

    Raises:
      StructureError: ``state`` holds bare arrays or frozen Variables (paths listed).
        Calling the result raises it when ``apply_fn`` does not return ``(out,
        new_state)`` with ``new_state`` shaped like ``state``; nothing is written then.
      TypeError: ``apply_fn`` is not callable.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from statetree.adapters import dicts
      >>> def apply(params, state, rng, x):  # counts its calls in state
      ...     return x @ params["lin"]["w"], {"count": {"n": state["count"]["n"] + 1}}
      >>> count = {"count": {"n": jnp.zeros((), jnp.int32)}}
      >>> params, state = dicts.from_haiku({"lin": {"w": jnp.ones(2)}}, count)
      >>> f = dicts.bind_haiku(apply, params, state)
      >>> jax.jit(lambda f, x: f(None, x))(f, jnp.ones(2))
      Array(2., dtype=float32)
      >>> state["count"]["n"][...]
      Array(1, dtype=int32)
    """
    return BoundHaiku(apply_fn, params, state)


BoundHaiku.__module__ = "statetree.adapters.dicts"  # public there (re-exported by dicts)
