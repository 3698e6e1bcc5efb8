"""Plain dict/list models, Flax-linen-style collections and Haiku-style functions, with
their state in mutable Variables that ``jax.jit`` updates in place.

Built on public ``statetree`` names only, as any outside adapter would be.

- :func:`mutable` / :func:`freeze`: a nested dict/list of arrays <-> the same tree of
  mutable Variables (``st.Param`` unless ``kind=`` says otherwise).
- :func:`from_collections` and :func:`bind`: Flax linen's ``{"params": ...,
  "batch_stats": ...}``; a bound ``model.apply`` that writes the updated collections
  back into the Variables instead of returning them.
- :func:`from_haiku` and :func:`bind_haiku`: the same for Haiku's
  ``apply(params, state, rng, *args) -> (out, new_state)``.

**Under jax.jit.** :class:`Bound` and :class:`BoundHaiku` are registered nodes
(``st.register_node``): their collections are data and ``apply_fn`` is static. So a bound
function is a jit argument like any model, ``jax.jit(step)(f, x)``, and its writes land
in the caller's Variables. Or pass the collections into jit and call :func:`bind` inside:
both cost the same (binding is plain Python at trace time). Pass one or the other, not
both: the bound function holds the very Variables of the collections, and JAX refuses one
reference passed twice.

**Under jax.grad.** Differentiate the parameters frozen and rebind with them inside the
loss; the mutable collections are still written in place (their kinds, ``BatchStat`` and
``Cache``, stop gradients on writes)::

    def loss_fn(params):
        out = f.replace(params=params)(x, train=True)
        return ((out - y) ** 2).mean()

    loss, grads = jax.value_and_grad(loss_fn)(st.freeze(f.collections["params"]))
"""

import difflib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import statetree as st

from ._haiku import BoundHaiku as BoundHaiku
from ._haiku import bind_haiku as bind_haiku
from ._haiku import from_haiku as from_haiku
from ._rngs import draw_rngs as draw_rngs
from ._trees import assign, check_kind, require_mutable, unpack
from ._trees import freeze as freeze
from ._trees import mutable as mutable

__all__ = [
    "COLLECTION_KINDS",
    "mutable",
    "freeze",
    "from_collections",
    "bind",
    "Bound",
    "from_haiku",
    "bind_haiku",
    "BoundHaiku",
    "draw_rngs",
]

COLLECTION_KINDS: Mapping[str, type] = types.MappingProxyType(
    {"params": st.Param, "batch_stats": st.BatchStat, "cache": st.Cache}
)
"""The Variable kind of each Flax collection; any other collection holds ``st.Variable``."""


def from_collections(
    variables: Mapping[str, Any], kinds: Mapping[str, type] | None = None
) -> dict[str, Any]:
    """Flax-linen-style ``{"params": ..., "batch_stats": ...}`` as mutable Variables.

    Args:
      variables: collection name -> tree of arrays, as ``model.init`` returns.
      kinds: adds to or overrides :data:`COLLECTION_KINDS` (params -> ``Param``,
        batch_stats -> ``BatchStat``, cache -> ``Cache``; any other collection holds
        ``Variable``), e.g. ``kinds={"spectral": st.BatchStat}``.

    Returns:
      A new dict of the same collections, each a tree of mutable Variables of its kind.

    Raises:
      TypeError: ``variables`` is not a mapping, a collection name is not a string, or a
        kind is not a Variable class.

    Examples:
      >>> import jax.numpy as jnp
      >>> from statetree.adapters import dicts
      >>> variables = {"params": {"w": jnp.ones(2)}, "batch_stats": {"m": jnp.zeros(2)}}
      >>> c = dicts.from_collections(variables)
      >>> type(c["params"]["w"]).__name__, type(c["batch_stats"]["m"]).__name__
      ('Param', 'BatchStat')
    """
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"from_collections(variables): expected a mapping from collection name to tree, "
            f"as model.init returns ({{'params': ..., 'batch_stats': ...}}); got "
            f"{type(variables).__name__}. For a single parameter tree use dicts.mutable(tree)."
        )
    table = dict(COLLECTION_KINDS)
    for name, kind in (kinds or {}).items():
        check_kind(kind, f"from_collections(kinds={{{name!r}: ...}})")
        table[name] = kind
    out = {}
    for name, collection in variables.items():
        if not isinstance(name, str):
            raise TypeError(
                f"from_collections(variables): collection names are strings such as "
                f"'params'; got the key {name!r}. Pass the dict that model.init returned."
            )
        out[name] = mutable(collection, kind=table.get(name, st.Variable))
    return out


def _mutable_names(mutable: Any, names: Sequence[str]) -> tuple[str, ...]:
    if mutable is None:
        return tuple(n for n in names if n != "params")
    if mutable is True:
        return tuple(names)
    if mutable is False:
        return ()
    chosen = (mutable,) if isinstance(mutable, str) else tuple(mutable)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(str(n), list(names), n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise st.StructureError(
            f"bind(mutable=...): no collection {', '.join(hints)} among the collections "
            f"given ({', '.join(map(repr, names)) or 'none'}). bind writes each mutable "
            "collection into the Variables that hold it, so the collection must exist "
            "before the call: a collection that apply_fn creates (sow's 'intermediates', "
            "a 'cache' made at init) must first come from model.init(...) or a functional "
            "apply, then dicts.from_collections(...)."
        )
    return chosen


@st.register_node
class Bound:
    """``apply_fn`` bound to Flax-linen-style collections; made by :func:`bind`.

    Calling it, ``f(*args, **kwargs)``, runs ``apply_fn(variables, *args,
    mutable=[...], **kwargs)`` on the collections' current values, writes the updated
    collections into their Variables in place (all or nothing: structure, shapes and
    dtypes are checked first) and returns the output alone. ``rngs=st.Rngs(...)`` (or
    a dict of ``st.Rng``) is passed on as linen's ``rngs`` dict of fresh keys
    (:func:`draw_rngs`), each stream advanced in place. A registered node: pass it
    to ``jax.jit`` as an argument (``apply_fn`` and ``mutable`` are static).

    Attributes:
      apply_fn: the bound function.
      collections: collection name -> tree of Variables (the caller's own Variables).
      mutable: the names of the collections written after each call.
    """

    apply_fn: Callable[..., Any]
    collections: dict[str, Any]
    mutable: tuple[str, ...]

    def __init__(
        self,
        apply_fn: Callable[..., Any],
        collections: Mapping[str, Any],
        mutable: bool | str | Sequence[str] | None = None,
    ) -> None:
        if not callable(apply_fn):
            raise TypeError(
                f"bind(apply_fn, ...): apply_fn must be callable, e.g. model.apply; got "
                f"{type(apply_fn).__name__}."
            )
        if not isinstance(collections, Mapping):
            raise TypeError(
                f"bind(apply_fn, collections): collections must map collection names to "
                f"trees ({{'params': ..., 'batch_stats': ...}}); got "
                f"{type(collections).__name__}. Build it with dicts.from_collections(variables)."
            )
        names = tuple(collections)
        chosen = _mutable_names(mutable, names)
        for name in chosen:
            require_mutable(
                collections[name],
                f"bind: the mutable collection {name!r}",
                (name,),
                "Convert the collections first: collections = dicts.from_collections(variables).",
            )
        self.apply_fn = apply_fn
        self.collections = dict(collections)
        self.mutable = chosen

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "mutable" in kwargs:
            raise TypeError(
                "A bound apply takes no mutable= argument: the mutable collections are "
                f"fixed at bind time (here {list(self.mutable)}). Bind again with "
                "dicts.bind(apply_fn, collections, mutable=[...]) to change them."
            )
        if "rngs" in kwargs:  # linen's keys, drawn from st.Rngs / st.Rng streams
            kwargs["rngs"] = draw_rngs(kwargs["rngs"])
        variables = {name: st.unbox(tree) for name, tree in self.collections.items()}
        result = self.apply_fn(variables, *args, mutable=list(self.mutable), **kwargs)
        out, updates = unpack(
            result, "apply_fn", "(out, updated_collections) when called with mutable=[...]"
        )
        if not isinstance(updates, Mapping):
            raise st.StructureError(
                f"apply_fn returned {type(updates).__name__} as its updated collections; "
                "expected a mapping from collection name to tree, as flax.linen's "
                "Module.apply returns with mutable=[...]."
            )
        extra = [n for n in updates if n not in self.mutable]
        missing = [n for n in self.mutable if n not in updates]
        if extra or missing:
            raise st.StructureError(
                f"apply_fn was called with mutable={list(self.mutable)} but returned "
                f"updates for {list(updates)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not mutable {extra}" if extra else "")
                + ". Nothing was written. apply_fn must return exactly the collections it "
                "was told are mutable."
            )
        targets = {name: self.collections[name] for name in self.mutable}
        assign(targets, {name: updates[name] for name in self.mutable}, "apply_fn's updates", ())
        return out

    def replace(self, **collections: Any) -> "Bound":
        """A new bound function with some collections replaced, the rest shared.

        Args:
          **collections: collection name -> replacement tree, e.g. ``params=params``
            with frozen params inside a loss under ``jax.grad``.

        Returns:
          A new :class:`Bound` with the same ``apply_fn`` and mutable names.

        Raises:
          StructureError: a name that is not one of this function's collections.
        """
        unknown = [n for n in collections if n not in self.collections]
        if unknown:
            raise st.StructureError(
                f"Bound.replace: no collection {unknown} to replace; this bound function "
                f"holds {list(self.collections)}. Use dicts.bind(...) to bind new ones."
            )
        return Bound(self.apply_fn, {**self.collections, **collections}, self.mutable)

    def __repr__(self) -> str:
        fn = getattr(self.apply_fn, "__qualname__", repr(self.apply_fn))
        counts = {n: len(st.state(t)) for n, t in self.collections.items()}
        return f"Bound({fn}, values per collection={counts}, mutable={list(self.mutable)})"


def bind(
    apply_fn: Callable[..., Any],
    collections: Mapping[str, Any],
    mutable: bool | str | Sequence[str] | None = None,
) -> Bound:
    """Bind a Flax-linen-style ``apply_fn`` to mutable collections.

    Args:
      apply_fn: ``apply_fn(variables, *args, mutable=[...], **kwargs) -> (out, updates)``,
        e.g. ``model.apply`` of a ``flax.linen`` Module.
      collections: as :func:`from_collections` returns; every mutable collection must hold
        mutable Variables (the others may hold anything, e.g. frozen params under grad).
      mutable: the collections apply_fn may update: names (a string or a sequence),
        ``True`` (all), ``False`` (none), or None (default: every collection but
        ``"params"``).

    Returns:
      ``f(*args, **kwargs) -> out``: a :class:`Bound`, a registered node that
      ``jax.jit`` takes as an argument.

    Raises:
      StructureError: a name in ``mutable`` is not a collection, or a mutable collection
        holds bare arrays or frozen Variables (the error lists their paths). Calling the
        result raises it when ``apply_fn`` returns another structure than it was given.
      TypeError: ``apply_fn`` is not callable or ``collections`` not a mapping.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from statetree.adapters import dicts
      >>> def apply(variables, x, mutable):  # a Flax-style apply that counts calls
      ...     n = variables["counts"]["n"]
      ...     return x * variables["params"]["w"], {"counts": {"n": n + 1}}
      >>> variables = {"params": {"w": jnp.full(2, 3.0)}, "counts": {"n": jnp.zeros((), int)}}
      >>> c = dicts.from_collections(variables)
      >>> f = dicts.bind(apply, c)
      >>> jax.jit(lambda f, x: f(x))(f, jnp.ones(2))
      Array([3., 3.], dtype=float32)
      >>> c["counts"]["n"][...]
      Array(1, dtype=int32)
    """
    return Bound(apply_fn, collections, mutable)
