"""Haiku/linen-style random keys drawn from statetree's random streams (``st.Rng``,
``st.Rngs``). Public ``statetree`` names only."""

from collections.abc import Mapping
from typing import Any

import statetree as st

__all__ = ["draw_rngs", "draw_key"]


def draw_rngs(rngs: Any) -> Any:
    """Flax linen's ``rngs=`` argument, ``{"dropout": key, ...}``, drawn from streams.

    Args:
      rngs: an ``st.Rngs`` (one key per stream), a mapping whose values are ``st.Rng``s
        or keys (each Rng drawn, keys passed as they are), or anything else (returned as
        it is: a linen ``rngs`` dict of keys already).

    Returns:
      A dict of fresh keys by stream name (each stream advanced in place), or ``rngs``.

    Examples:
      >>> import statetree as st
      >>> from statetree.adapters import dicts
      >>> keys = dicts.draw_rngs(st.Rngs(params=0, dropout=1))
      >>> sorted(keys), keys["dropout"].dtype
      (['dropout', 'params'], key<fry>)
    """
    if isinstance(rngs, st.Rngs):
        return {name: rngs[name]() for name in rngs.names}
    if isinstance(rngs, Mapping) and any(isinstance(r, st.Rng) for r in rngs.values()):
        return {name: r() if isinstance(r, st.Rng) else r for name, r in rngs.items()}
    return rngs


def draw_key(rng: Any) -> Any:
    """Haiku's ``rng`` argument: a fresh key from an ``st.Rng`` (or the default stream
    of an ``st.Rngs``); anything else (a key, None) is returned as it is."""
    if isinstance(rng, (st.Rng, st.Rngs)):
        return rng()
    return rng
