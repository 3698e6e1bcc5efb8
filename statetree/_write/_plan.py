"""The one write path: every value written into a Variable or a Ref goes through here.

``v[...] = x``, ``st.update``, ``Optimizer.update``, ``st.restore`` and the adapters all
write through a :class:`WritePlan`: each write is checked when it is added (the target
is mutable storage and readable; the value is an array, readable, of a dtype and shape
that fit; a static index is in range), and nothing is written until :meth:`commit`,
which refuses the whole plan if any write was refused and otherwise carries out every
write at once (packed views: one write per buffer, :func:`statetree._storage.write_all`).
Half-applied writes therefore have one place to be impossible.

Two rules for values, chosen per plan:

- ``exact=False``, NumPy assignment (``v[...] = x``, the optimizer, the adapters): the
  value broadcasts to the indexed shape and is cast if NumPy's ``same_kind`` casting
  allows it; Python and NumPy scalars take the target's dtype, in range.
- ``exact=True`` (``st.update``, checkpoint restore): the value must have the target's
  dtype and shape already, so a State from another model never lands silently.
"""

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import numpy as np

from .. import _recall
from .._errors import (
    FrozenVariableError,
    RefValueError,
    StateTreeError,
    StructureError,
    UnreadableValueError,
    cut_lines,  # long lists cut after a count, as everywhere
    format_path,
)
from . import _bulk, _rules, _storage

__all__ = ["Box", "WritePlan", "check_readable", "write_one"]

Path = tuple[Any, ...]


class Box:
    """The base of write targets that box their storage: ``Variable`` derives from it
    (``_variables`` imports this module, so the planner never imports it back). A box
    has ``_raw`` (its storage or array), ``_describe()`` (for messages) and a class
    attribute ``differentiable``. A plain base, not an ABC: ``isinstance`` on every
    write stays a C-level check."""

    __slots__ = ()

    if TYPE_CHECKING:  # what the planner reads; Variable provides each
        _raw: Any
        differentiable: ClassVar[bool]

        @property
        def value(self) -> Any: ...

        def _describe(self) -> str: ...


def _frozen(target: Any) -> FrozenVariableError:
    return FrozenVariableError(
        f"Cannot write into a {target._describe()}: it holds a plain "
        "jax.Array, and a write inside jax.jit would be lost when the call "
        "returns. Make it mutable first: st.mutable(tree) for a whole tree, or "
        "create it with mutable=True (or under st.use_mutable_arrays(True))."
    )


def _describe_raw(raw: Any) -> Callable[[], str]:
    def describe() -> str:
        shape = ",".join(map(str, getattr(raw, "shape", ())))
        return f"a Ref {getattr(raw, 'dtype', '?')}[{shape}]"

    return describe


def _stored(value: Any, differentiable: bool) -> Any:
    """What a Ref receives of ``value``: non-differentiable kinds (batch statistics,
    caches, optimizer state) are written inside losses, and JAX refuses differentiated
    values in such writes, so they store ``stop_gradient(value)``. Reads later in the
    same trace take ``value``'s gradient again (:mod:`statetree._recall`)."""
    return value if differentiable else jax.lax.stop_gradient(value)


def prepare(target: Any, new: Any, idx: Any, exact: bool) -> tuple[Any, Any, bool]:
    """``(raw storage, value, whether the kind is differentiable)`` for the write
    ``target[idx] = new``, after every check; raises the statetree error that says why
    it cannot be written. The Ref is to receive ``_stored(value, differentiable)``."""
    if isinstance(target, Box):
        raw = target._raw
        if not _storage.is_storage(raw):
            if idx is Ellipsis and exact:  # in a list of paths: say it short
                raise FrozenVariableError(
                    f"the tree holds a frozen {type(target).__name__} here, which cannot be "
                    "written in place; make the tree mutable first: tree = st.mutable(tree)"
                )
            raise _frozen(target)
        describe: Callable[[], str] = target._describe
        differentiable = type(target).differentiable
    elif _storage.is_storage(target):
        raw, describe, differentiable = target, _describe_raw(target), True
    else:
        raise StructureError(
            "the tree holds a bare array here, which cannot be written in place; make "
            "the tree mutable first: tree = st.mutable(tree)"
        )
    _rules.require_readable(raw, describe)
    if isinstance(new, Box):
        if exact and isinstance(target, Box) and type(new) is not type(target):
            raise StructureError(
                f"kind {type(new).__name__} does not match the tree's {type(target).__name__}"
            )
        if exact and not isinstance(target, Box):
            kind = type(new).__name__
            raise StructureError(f"the tree holds a raw Ref here, the State a {kind}")
        new = new._raw
    reason = _rules.unreadable(new)
    if reason is not None:
        raise UnreadableValueError(f"Cannot write into {describe()}: the value {reason}.")
    if _storage.is_storage(new):
        new = _storage.read(new)
    if exact:
        value = _exact(raw, new)
    else:
        value = _rules.coerce(new, raw.dtype, tuple(raw.shape), idx, describe)
    return raw, value, differentiable


def _exact(raw: Any, new: Any) -> Any:
    """``new`` unchanged when it has exactly ``raw``'s dtype and shape (``st.update``)."""
    shape, dtype = tuple(raw.shape), raw.dtype
    new_dtype = getattr(new, "dtype", None)
    new_shape = tuple(new.shape) if hasattr(new, "shape") else None
    if new_dtype is None or new_shape is None:
        got = f"a {type(new).__name__}, not an array"
    elif new_shape != shape or new_dtype != dtype:
        got = f"{new_dtype}{list(new_shape)}"
    else:
        return new
    raise StructureError(f"expected {dtype}{list(shape)}, got {got}")


_raw_of = operator.attrgetter("_raw")
# Writes the fast path accepted: the Refs, the values, the types of the Refs' buffers,
# the buffers.
_Checked = tuple[list[Any], list[Any], _bulk.Types, list[Any]]
_HOST_ARRAY = {np.ndarray}  # the types of a list of NumPy arrays (not masked arrays)


def _accepted(targets: Sequence[Any], news: Sequence[Any]) -> _Checked | None:
    """The writes ``(Refs, values, the types of the Refs' buffers, the buffers)`` of
    ``target[...] = new`` for each pair, when every pair takes the fast path: each
    target a mutable Variable (kinds subclass :class:`Box`) around a concrete
    ``jax.Ref``; each new value either a concrete, readable ``jax.Array`` (or a Variable
    of the target's very kind around one) whose type (weak typing included) and
    sharding equal those of the Ref's buffer, or a NumPy array of the buffer's shape
    and dtype (:func:`statetree._bulk.host_fits`). Then each check :func:`prepare`
    makes holds (storage, readable, kind, dtype and shape, under either rule; NumPy's
    casting has nothing to cast), and ``stop_gradient`` outside a transform changes no
    value. None when any pair does not qualify (each then goes through
    :func:`prepare`, with its checks and messages); nothing is checked twice."""
    if len(targets) < _bulk.MIN_GROUP or not _bulk.top_level():
        return None  # a few values: one by one costs less than the passes below
    kinds = list(map(type, targets))
    if not all(issubclass(kind, Box) for kind in set(kinds)):
        return None
    raws = list(map(_raw_of, targets))
    if not _bulk.all_refs(raws):
        return None
    buffers = _bulk.buffers(raws)
    if not _bulk.all_arrays(buffers):
        return None
    types = _bulk.array_types(buffers)
    values = list(news)
    if set(map(type, values)) == _HOST_ARRAY:  # NumPy arrays (a checkpoint restore's values)
        return (raws, values, types, buffers) if _bulk.host_fits(values, types) else None
    if not _bulk.all_arrays(values):
        if list(map(type, values)) != kinds:  # Variables of the targets' kinds
            return None
        values = list(map(_raw_of, values))
        if not _bulk.all_arrays(values):
            return None
    if any(map(_bulk.ARRAY.is_deleted, values)):
        return None
    if not _bulk.same_types(_bulk.array_types(values), types):
        return None
    return raws, values, types, buffers


def write_one(target: Any, idx: Any, new: Any) -> None:
    """``target[idx] = new`` for one Variable: checked, then written (NumPy rules)."""
    if isinstance(new, Box):
        new = new.value
    if _storage.is_storage(new):
        raise RefValueError(
            f"Cannot write a jax.Ref into {target._describe()}: a Variable stores "
            "values, not references. Write its current value instead: v[...] = ref[...]."
        )
    raw, value, differentiable = prepare(target, new, idx, exact=False)
    if differentiable or not isinstance(raw, jax.Ref) or _bulk.top_level():
        if idx is Ellipsis:
            _storage.write(raw, _stored(value, differentiable))
        else:
            _storage.write_at(raw, idx, _stored(value, differentiable))
        return
    # A non-differentiable kind inside a trace: the whole new value is computed from the
    # one a read gives (with the gradient of a value written earlier in this trace),
    # stored without its gradient, and remembered with it (statetree._recall).
    if idx is not Ellipsis:
        value = _storage.set_at(_storage.read(raw), idx, value)
    _storage.write(raw, _stored(value, differentiable))
    _recall.remember(raw, value)


class WritePlan:
    """Writes that are checked as they are added and carried out together.

    Args:
      who: the caller, named in errors (``"update"``, ``"Optimizer.update"``, ...).
      exact: values must have their target's dtype and shape already (``st.update``'s
        rule); otherwise NumPy's assignment rules apply, as for ``v[...] = x``.
      where: turns the ``path`` given to :meth:`add` into the path named in errors
        (callers that know positions cheaply and paths only at a cost pass positions).
    """

    __slots__ = ("_checked", "_problems", "_traced", "_where", "_writes", "exact", "who")

    def __init__(
        self, who: str, *, exact: bool = False, where: Callable[[Any], Path] | None = None
    ) -> None:
        self.who = who
        self.exact = exact
        self._where = where
        self._writes: list[tuple[Any, Any]] = []
        # Writes the fast path accepted (add_all), while no other write was added;
        # else they join ``_writes``, in order. At most one of the two is non-empty.
        self._checked: list[_Checked] = []
        self._problems: list[tuple[Any, StateTreeError]] = []
        # Inside a trace: (Ref, value with its gradient) of each write, remembered at
        # commit so later reads in the trace get them (statetree._recall).
        self._traced: list[tuple[Any, Any]] | None = None if _bulk.top_level() else []

    def add(self, target: Any, new: Any, path: Any = None) -> None:
        """Plan ``target[...] = new``; a write that cannot be made is remembered (with
        ``path`` for the message) and refuses the whole plan at :meth:`commit`."""
        if self._checked:  # keep the order: the accepted writes come first
            self._writes = [
                w for raws, values, *_ in self._checked for w in zip(raws, values, strict=True)
            ]
            self._checked = []
        try:
            raw, value, differentiable = prepare(target, new, Ellipsis, self.exact)
        except StateTreeError as e:
            self._problems.append((path, e))
            return
        self._writes.append((raw, _stored(value, differentiable)))
        if self._traced is not None and not differentiable and isinstance(raw, jax.Ref):
            self._traced.append((raw, value))

    def add_all(self, targets: Sequence[Any], news: Sequence[Any], paths: Sequence[Any]) -> None:
        """:meth:`add` for each ``(target, new, path)``; pairs that meet the fast-path
        contract (README.md beside this file) are checked in C-level passes over the
        lists (:func:`_accepted`), anything else value by value through :meth:`add`."""
        accepted = _accepted(targets, news)
        if accepted is None:
            for target, new, path in zip(targets, news, paths, strict=True):
                self.add(target, new, path)
        elif self._writes:  # after other writes: carried out with them, in order
            self._writes.extend(zip(accepted[0], accepted[1], strict=True))
        else:
            self._checked.append(accepted)

    def refuse(self, path: Any, problem: StateTreeError) -> None:
        """Record a problem found by the caller (an extra path, a conflict)."""
        self._problems.append((path, problem))

    def commit(self) -> None:
        """Carry out every planned write, or none: raise when any write was refused."""
        if self._problems:
            raise self.error()
        if self._writes:
            _storage.write_all(self._writes)
        if self._traced:
            _recall.remember_all(self._traced)
        for raws, values, types, buffers in self._checked:  # accepted by the fast
            _storage.write_checked(raws, values, types, buffers)  # path: not checked again
        self._writes, self._checked = [], []
        self._traced = None if self._traced is None else []

    def error(self) -> StateTreeError:
        """One error naming every refused write: of the class the problems share, or a
        StructureError when they differ."""
        classes = {type(e) for _, e in self._problems}
        cls = classes.pop() if len(classes) == 1 else StructureError
        where = self._where
        lines = [
            f"  {e}" if p is None else f"  {format_path(where(p) if where else p)}: {e}"
            for p, e in self._problems
        ]
        n = len(self._problems)
        head = f"{self.who}: {n} path(s) cannot be written; nothing was written:"
        return cls(head + "\n" + cut_lines(lines, 20))


def check_readable(values: list[Any], paths: Callable[[], tuple[Path, ...]], who: str) -> None:
    """Refuse, naming every path, values that cannot be read (deleted or donated arrays,
    escaped tracers), before ``who`` converts or writes any of them. ``paths()`` gives
    the values' paths; it is called only when one is refused."""
    refuse_values(
        values,
        _rules.unreadable,
        paths,
        UnreadableValueError,
        f"{who}: {{n}} value(s) cannot be read; nothing was converted:",
    )


def refuse_values(
    values: list[Any],
    reason: Callable[[Any], str | None],
    paths: Callable[[], tuple[Path, ...]],
    error: type[StateTreeError],
    head: str,
    fix: str = "",
) -> None:
    """Raise ``error`` naming the path of every value (a Variable: its array or storage)
    for which ``reason`` gives a reason: ``head`` (its ``{n}``: how many), one line per
    path (cut after 20), then ``fix``. ``paths()`` is called only when one is refused."""
    bad = []
    for i, value in enumerate(values):
        why = reason(value._raw if isinstance(value, Box) else value)
        if why is not None:
            bad.append(f"  {format_path(paths()[i])}: {why}")
    if bad:
        tail = f"\n{fix}" if fix else ""
        raise error(head.replace("{n}", str(len(bad))) + "\n" + cut_lines(bad, 20) + tail)
