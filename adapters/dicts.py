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

import jax
import numpy as np

import statetree as st

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
]

COLLECTION_KINDS: Mapping[str, type] = types.MappingProxyType(
    {"params": st.Param, "batch_stats": st.BatchStat, "cache": st.Cache}
)
"""The Variable kind of each Flax collection; any other collection holds ``st.Variable``."""

_ARRAYS = (jax.Array, np.ndarray, np.generic)


def _is_variable(x: Any) -> bool:
    return isinstance(x, st.Variable)


def _path_str(path: tuple[Any, ...]) -> str:
    return "".join(f"[{key!r}]" for key in path) or "<root>"


def _paths_block(paths: Sequence[tuple[Any, ...]], prefix: tuple[Any, ...] = ()) -> str:
    shown = [f"  {_path_str(prefix + p)}" for p in paths[:20]]
    if len(paths) > 20:
        shown.append(f"  ... and {len(paths) - 20} more")
    return "\n".join(shown)


def _check_kind(kind: Any, where: str) -> None:
    if not (isinstance(kind, type) and issubclass(kind, st.Variable)):
        raise TypeError(
            f"{where}: a kind must be a Variable class such as st.Param, st.BatchStat or "
            f"st.Cache (or your own subclass of st.Variable); got {kind!r}."
        )


# ---------------------------------------------------------------------------- plain trees
def mutable(tree: Any, kind: type = st.Param) -> Any:
    """The tree with every array leaf in a new mutable ``kind`` Variable.

    Variables already in the tree keep their kind and are made mutable (``st.mutable``);
    non-array leaves (ints, strings, None) are left alone. The input is not modified.

    >>> import jax.numpy as jnp, statetree as st
    >>> from statetree.adapters import dicts
    >>> params = dicts.mutable({"dense": {"kernel": jnp.ones((2, 3))}, "scale": [jnp.ones(3)]})
    >>> params["dense"]["kernel"]
    Param(float32[2,3], mutable=True, value=...)
    >>> dicts.freeze(params)["scale"]
    [Array([1., 1., 1.], dtype=float32)]
    """
    _check_kind(kind, "dicts.mutable(tree, kind=...)")

    def box(x: Any) -> Any:
        return kind(x, mutable=True) if isinstance(x, _ARRAYS) else x

    return st.mutable(jax.tree.map(box, tree, is_leaf=_is_variable))


def freeze(tree: Any) -> Any:
    """The tree with every Variable replaced by its current array: a plain dict/list
    tree again, as the functional code that made it expects (``st.unbox``)."""
    return st.unbox(tree)


# ---------------------------------------------------------------------------- flax linen
def from_collections(
    variables: Mapping[str, Any], kinds: Mapping[str, type] | None = None
) -> dict[str, Any]:
    """Flax-linen-style ``{"params": ..., "batch_stats": ...}`` as mutable Variables.

    Each collection gets its kind from :data:`COLLECTION_KINDS` (params -> ``Param``,
    batch_stats -> ``BatchStat``, cache -> ``Cache``, any other -> ``Variable``);
    ``kinds`` adds or overrides entries, e.g. ``kinds={"spectral": st.BatchStat}``.
    """
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"from_collections(variables): expected a mapping from collection name to tree, "
            f"as model.init returns ({{'params': ..., 'batch_stats': ...}}); got "
            f"{type(variables).__name__}. For a single parameter tree use dicts.mutable(tree)."
        )
    table = dict(COLLECTION_KINDS)
    for name, kind in (kinds or {}).items():
        _check_kind(kind, f"from_collections(kinds={{{name!r}: ...}})")
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


def _require_mutable(tree: Any, where: str, prefix: tuple[Any, ...], fix: str) -> None:
    """Every value in ``tree`` must be a mutable Variable (or Ref): it is written in place."""
    bad = []
    for path, value in st.state(tree).items():
        if not st.is_mutable(value):
            what = f"a frozen {type(value).__name__}" if _is_variable(value) else "a bare array"
            bad.append(f"  {_path_str(prefix + path)}: {what}")
    if bad:
        raise st.StructureError(
            f"{where} must hold mutable Variables, because the updated values are written "
            "into them in place (a bare array has no storage to write to, and a write into "
            f"a frozen Variable would be lost after jax.jit). These do not:\n"
            + "\n".join(bad[:20])
            + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            + f"\n{fix}"
        )


def _assign(targets: Any, new: Any, who: str, prefix: tuple[Any, ...]) -> None:
    """Write ``new`` (a tree of arrays) into the mutable Variables of ``targets``, all
    or nothing; errors name every path that does not fit."""
    have = st.state(targets).paths()
    got = st.state(new)
    have_set, got_set = set(have), set(got.paths())
    missing = [p for p in have if p not in got_set]
    extra = [p for p in got.paths() if p not in have_set]
    if missing or extra:
        problems = []
        if missing:
            problems.append("missing (held here, not returned):\n" + _paths_block(missing, prefix))
        if extra:
            problems.append("extra (returned, not held here):\n" + _paths_block(extra, prefix))
        raise st.StructureError(
            f"{who} do not have the structure of the Variables they update; nothing was "
            "written.\n" + "\n".join(problems) + "\napply_fn must return each updated "
            "collection whole, with the same keys, as it received it."
        )
    try:
        st.update(targets, got)
    except st.StructureError as e:
        raise st.StructureError(
            f"{who} do not fit the Variables they update (paths below are relative to "
            f"{_path_str(prefix)}); nothing was written.\n{e}"
        ) from None


def _unpack(result: Any, who: str, expected: str) -> tuple[Any, Any]:
    if not (isinstance(result, tuple) and len(result) == 2):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise st.StructureError(
            f"{who} must return {expected}; it returned {got}. Check that apply_fn is "
            "the function that returns the updated state as well as the output."
        )
    return result


@st.register_node
class Bound:
    """``apply_fn`` bound to Flax-linen-style collections; made by :func:`bind`.

    Calling it, ``f(*args, **kwargs)``, runs ``apply_fn(variables, *args,
    mutable=[...], **kwargs)`` on the collections' current values, writes the updated
    collections into their Variables in place and returns the output alone. A registered
    node: pass it to ``jax.jit`` as an argument (``apply_fn`` is static).
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
            _require_mutable(
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
        variables = {name: st.unbox(tree) for name, tree in self.collections.items()}
        result = self.apply_fn(variables, *args, mutable=list(self.mutable), **kwargs)
        out, updates = _unpack(
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
        _assign(targets, {name: updates[name] for name in self.mutable}, "apply_fn's updates", ())
        return out

    def replace(self, **collections: Any) -> "Bound":
        """A new bound function with some collections replaced, the rest shared; e.g.
        ``f.replace(params=params)`` with frozen params inside a loss under ``jax.grad``."""
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
    """
    return Bound(apply_fn, collections, mutable)


# ---------------------------------------------------------------------------- haiku
def from_haiku(params: Any, state: Any) -> tuple[Any, Any]:
    """Haiku's ``(params, state)`` as mutable Variables: ``Param``s and ``BatchStat``s
    (Haiku state is never differentiated, so it takes a non-differentiable kind)."""
    return mutable(params, kind=st.Param), mutable(state, kind=st.BatchStat)


@st.register_node
class BoundHaiku:
    """A Haiku-style ``apply_fn`` bound to params and state; made by :func:`bind_haiku`.

    ``f(rng, *args, **kwargs)`` runs ``apply_fn(params, state, rng, *args, **kwargs)``
    on the current values, writes the new state into the state's Variables in place and
    returns the output alone.
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
        _require_mutable(
            state,
            "bind_haiku(state=...): the state",
            ("state",),
            "Convert it first: params, state = dicts.from_haiku(params, state).",
        )
        self.apply_fn = apply_fn
        self.params = params
        self.state = state

    def __call__(self, rng: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.apply_fn(st.unbox(self.params), st.unbox(self.state), rng, *args, **kwargs)
        out, new_state = _unpack(result, "apply_fn", "(out, new_state)")
        _assign(self.state, new_state, "apply_fn's new state", ("state",))
        return out

    def replace(self, *, params: Any = None, state: Any = None) -> "BoundHaiku":
        """A new bound function with ``params`` and/or ``state`` replaced, e.g.
        ``f.replace(params=params)`` with frozen params inside a loss under ``jax.grad``."""
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

    ``state`` must hold mutable Variables (see :func:`from_haiku`); ``params`` may be
    mutable, or frozen inside a loss under ``jax.grad``. Returns ``f(rng, *args) -> out``,
    a :class:`BoundHaiku` (a registered node that ``jax.jit`` takes as an argument).
    """
    return BoundHaiku(apply_fn, params, state)
