"""``st.Optimizer``: optax, applied in place.

An Optimizer keeps the optax state of a model's ``wrt`` Variables as mutable
``st.OptState`` Variables, plus a step counter. It keeps **no** reference to the model's
Variables (only their paths), so a jitted step may take both::

    @jax.jit
    def train_step(model, optimizer, x, y):
        graphdef, params, rest = st.split(model, st.Param, ...)
        grads = jax.grad(loss)(st.freeze(params), graphdef, rest, x, y)
        optimizer.update(model, grads)          # writes params and optax state in place

``update`` computes exactly what the functional optax loop computes
(``updates, state = tx.update(grads, state, params)``,
``params = optax.apply_updates(params, updates)``) and writes the results into the
Variables instead of returning them.

The trees handed to optax are ``st.State``s of arrays keyed by the model's paths, so
optax sees one flat level of leaves in the model's order, whatever the model's pytree.
"""

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.sharding import NamedSharding, PartitionSpec

from . import _graph, _jax, _packed
from ._convert import mutable
from ._errors import (
    FrozenVariableError,
    Misfit,
    StructureError,
    format_path,
    format_paths,
    misfit_report,
)
from ._filters import PathContains, filter_repr, to_predicate
from ._graph import Path, PathKey
from ._split import state as _state
from ._state import State
from ._variables import OptState, Param, Variable, raw_of
from ._write import WritePlan
from ._write import storage as _storage

__all__ = ["Optimizer"]


def _as_transformation(tx: Any) -> optax.GradientTransformation:
    if isinstance(tx, optax.GradientTransformation):
        return tx
    if isinstance(tx, optax.MultiSteps):
        return tx.gradient_transformation()
    raise TypeError(
        f"Optimizer(model, tx): tx must be an optax GradientTransformation (optax.adam(1e-3), "
        f"optax.chain(...), optax.MultiSteps(...), optax.inject_hyperparams(...)(...)), got "
        f"{type(tx).__name__}."
    )


def _box(tree: Any, home: Any) -> Any:
    """Every array leaf of an optax state -> a fresh mutable ``OptState`` (placed at
    ``home`` if it sits on one device: see :func:`_mesh_home`)."""
    graphdef, values = _graph.flatten(tree)
    return _graph.unflatten(graphdef, [OptState(_place(v, home), mutable=True) for v in values])


def _mesh_home(params: Any) -> NamedSharding | None:
    """Replicated over the mesh of the first parameter laid out across several devices;
    None when every parameter sits on one device (or is traced).

    optax creates its counters with ``jnp.zeros``, which outside ``jax.set_mesh`` lands
    on one device; ``jax.jit`` refuses to mix such a Ref with Refs spread over a mesh.
    """
    for value in params:
        sharding = None if _jax.is_tracer(value) else getattr(value, "sharding", None)
        if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1:
            return NamedSharding(sharding.mesh, PartitionSpec(), memory_kind=sharding.memory_kind)
    return None


def _place(value: Any, home: NamedSharding | None) -> Any:
    """``value``, moved to ``home`` unless it is traced or already spread over devices."""
    if home is None or _jax.is_tracer(value):
        return value
    sharding = getattr(value, "sharding", None)  # None for NumPy values
    if sharding is not None and len(sharding.device_set) > 1:
        return value
    return jax.device_put(value, home)


def _writable(target: Any) -> bool:
    return target.mutable if isinstance(target, Variable) else _storage.is_storage(target)


def _read(value: Any) -> Any:
    return value.value if isinstance(value, Variable) else _storage.read(value)


def _path_lines(paths: Sequence[Path]) -> str:
    return format_paths(list(paths))


class Optimizer:
    """An optax optimizer whose state lives in mutable ``st.OptState`` Variables.

    Args:
      model: any pytree holding the Variables to train.
      tx: an optax ``GradientTransformation`` (chains, schedules,
        ``optax.inject_hyperparams``) or an ``optax.MultiSteps``.
      wrt: a filter (as in ``st.split``) choosing the Variables to train; default
        ``st.Param``.
      packed: keep the optax state and the step counter in a few flat buffers
        (``st.mutable(..., packed=True)``) instead of one ``jax.Ref`` per array, so a
        jitted step dispatches faster; use it with a packed model.

    The Optimizer is a pytree: pass it to ``jax.jit`` beside the model. It holds the
    optax state (``opt_state``, a tree of ``OptState``), the number of ``update`` calls
    (``step``, an ``OptState``), and, as static data, ``tx``, ``wrt`` and the paths of
    the trained Variables. Hyperparameters injected with ``optax.inject_hyperparams``
    are read and written in place through :attr:`hyperparams`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, statetree as st
      >>> model = st.mutable({"w": st.Param(jnp.ones(2))})
      >>> optimizer = st.Optimizer(model, optax.sgd(0.5))
      >>> optimizer.update(model, {"w": jnp.ones(2)})
      >>> model["w"][...], int(optimizer.step[...])
      (Array([0.5, 0.5], dtype=float32), 1)
    """

    tx: optax.GradientTransformation
    wrt: Any
    paths: tuple[Path, ...]
    # The one child JAX sees: {"opt_state": ..., "step": ...}, a plain dict or, packed,
    # a st.Packed around that dict (st.freeze unpacks it into the plain dict again).
    _child: Any

    def __init__(self, model: Any, tx: Any, wrt: Any = Param, *, packed: bool = False) -> None:
        tx = _as_transformation(tx)
        to_predicate(wrt)  # a bad filter fails here, naming itself
        params = _state(model, wrt)
        if not len(params):
            kinds = sorted({type(v).__name__ for v in _graph.flatten(model)[1]})
            raise StructureError(
                f"Optimizer(model, tx, wrt={filter_repr(wrt)}): wrt matches no Variable of "
                f"the model, so there is nothing to train. The model holds "
                f"{', '.join(kinds) or 'no values'}. Pass the kind (or filter) of the "
                "Variables to train, e.g. wrt=st.Param."
            )
        self.paths = params.paths()
        self.tx = tx
        self.wrt = wrt
        arrays = State({p: _read(v) for p, v in params.items()})
        home = _mesh_home(arrays.values())
        opt_state = _box(tx.init(arrays), home)
        step = OptState(_place(jnp.zeros((), jnp.int32), home), mutable=True)
        child = {"opt_state": opt_state, "step": step}
        # Packed: a few flat buffers instead of one Ref per array, the step counter in
        # them too (int32 shares the 32-bit buffer of float32): jit dispatches faster.
        self._child = mutable(child, packed=True) if packed else child

    @property
    def opt_state(self) -> Any:
        """The optax state, a tree of ``OptState`` Variables (a ``st.Packed`` over the
        optimizer's buffers when it is packed)."""
        child = self._child
        if isinstance(child, _packed.Packed):
            return _packed.from_tree(child["opt_state"])
        return child["opt_state"]

    @property
    def step(self) -> OptState:
        """The number of :meth:`update` calls, an ``OptState`` Variable.

        Under ``optax.MultiSteps`` that counts calls, not updates applied to the model:
        with ``every_k_schedule=4``, four calls make ``step`` 4 and change the weights
        once. The number of updates applied is MultiSteps' own counter,
        ``optimizer.opt_state.gradient_step`` (``mini_step`` counts the calls since the
        last one)."""
        return self._child["step"]

    # ------------------------------------------------------------------ update
    def update(self, model: Any, grads: Any, **extra_args: Any) -> None:
        """Apply one optax step in place: the model's ``wrt`` Variables, ``opt_state``
        and ``step`` are written; nothing is returned.

        ``grads`` holds one gradient per trained Variable, keyed by the same paths: what
        ``jax.grad`` returns for ``st.freeze(params)`` (a State of Variables), a State of
        arrays, or any tree of arrays whose paths are the model's (Variables of kinds that
        ``wrt`` does not select are ignored, so gradients of the whole frozen model work).
        ``extra_args`` go to ``tx.update`` (e.g. ``value=loss`` for optax transforms that
        need it). Every check runs before the first write: on error nothing changes.
        """
        targets = self._targets(model)
        state_def, state_vars = _graph.flatten(self._child["opt_state"])
        step = self.step
        frozen_own = [v for v in (*state_vars, step) if not _writable(v)]
        if frozen_own:
            raise FrozenVariableError(
                f"Optimizer.update: the optimizer's own state is frozen ({len(frozen_own)} "
                "OptState Variable(s)), so it cannot be updated in place. It was probably "
                "passed through st.freeze; use st.mutable(optimizer) to get a mutable one."
            )
        gradients = self._gradients(grads, targets)
        params = State({p: _read(targets[p]) for p in self.paths})
        current = _graph.unflatten(state_def, [v.value for v in state_vars])
        updates, new_state = self.tx.update(gradients, current, params, **extra_args)
        # optax types its result as a loose ArrayTree; it is a State here, as given.
        new_params = cast(State, optax.apply_updates(params, updates))
        new_values = _graph.flatten(new_state)[1]
        if len(new_values) != len(state_vars):
            raise StructureError(
                f"Optimizer.update: tx.update returned a state with {len(new_values)} "
                f"arrays, but tx.init made {len(state_vars)}. The optax state must keep "
                "its structure from step to step."
            )
        # statetree's one write path: everything checked, then one batch (packed buffers
        # take one write each); NumPy's casting rules, as for `v[...] = x`.
        plan = WritePlan("Optimizer.update")
        for path, new in zip(self.paths, new_params.values(), strict=True):
            plan.add(targets[path], new, path)
        for var, new in zip(state_vars, new_values, strict=True):
            plan.add(var, new, ("opt_state",))
        plan.add(step, step[...] + 1, ("step",))
        plan.commit()

    def _targets(self, model: Any) -> dict[Path, Any]:
        """The model's ``wrt`` Variables by path, checked against this optimizer."""
        params = _state(model, self.wrt)
        found = dict(params.items())
        expected = set(self.paths)
        missing = [p for p in self.paths if p not in found]
        extra = [p for p in found if p not in expected]
        message = misfit_report(
            f"Optimizer.update(model, grads): the model's wrt={filter_repr(self.wrt)} "
            "Variables are not the ones this optimizer was created for.",
            [
                ("trained by this optimizer, not in the model", missing),
                ("in the model, unknown to this optimizer", extra),
            ],
            "Pass the model the optimizer was built with (st.Optimizer(model, tx)); "
            "after changing the model's structure, build a new optimizer.",
        )
        if message:
            raise StructureError(message)
        frozen = [p for p in self.paths if not _writable(found[p])]
        if frozen:
            raise FrozenVariableError(
                f"Optimizer.update: {len(frozen)} of the model's trained Variables are "
                "frozen, so they cannot be updated in place:\n"
                + _path_lines(frozen)
                + "\nPass the mutable model (model = st.mutable(model)), not "
                "st.freeze(model); differentiate a frozen copy of the params instead."
            )
        return found

    def _gradients(self, grads: Any, targets: dict[Path, Any]) -> State:
        """``grads`` as a State of arrays in this optimizer's path order."""
        if isinstance(grads, State):
            items = grads.items()
        else:
            everything = _state(grads)
            items = everything.items()
        select = to_predicate(self.wrt)
        # A Variable holding None is a placeholder, not a gradient: what Equinox's
        # filter_grad / partition leave where a mutable Variable's jax.Ref was (they
        # take only jax.Arrays), so such grads count as missing.
        empty = {p for p, g in items if isinstance(g, Variable) and raw_of(g) is None}
        found = {
            p: g
            for p, g in items
            if p not in empty and (not isinstance(g, Variable) or select(p, g))
        }
        wrong = [
            Misfit(p, f"gradient {tuple(jnp.shape(found[p]))}, Variable {tuple(targets[p].shape)}")
            for p in self.paths
            if p in found and tuple(jnp.shape(found[p])) != tuple(targets[p].shape)
        ]
        missing = [p for p in self.paths if p not in found]
        fix = (
            "Differentiate with respect to the split params: "
            "graphdef, params, rest = st.split(model, wrt, ...); "
            "grads = jax.grad(loss)(st.freeze(params), ...)."
        )
        extra = [p for p in found if p not in targets]
        if extra and not missing:
            fix = (
                "The model holds no trained Variable there: a part put in after the "
                "conversion (eqx.tree_at surgery) holds plain arrays. Convert the model "
                "again (model = st.mutable(model), or statetree.adapters.equinox.mutable("
                "model)) and make a new st.Optimizer for it. " + fix
            )
        if missing and (empty or not found):
            fix = (
                "grads hold no arrays there. eqx.filter_grad, eqx.filter_value_and_grad "
                "and eqx.partition(model, eqx.is_array) see a mutable Variable's jax.Ref "
                "as a non-array and differentiate nothing; differentiate a frozen copy "
                "instead: eqx.filter_grad(loss)(statetree.adapters.equinox.freeze(model)). " + fix
            )
        message = misfit_report(
            "Optimizer.update(model, grads): grads do not match the model's "
            f"wrt={filter_repr(self.wrt)} Variables.",
            [
                ("no gradient for", missing),
                ("gradient for a path the model does not train", extra),
                ("shapes differ", wrong),
            ],
            fix,
        )
        if message:
            raise StructureError(message)
        return State({p: _read(found[p]) for p in self.paths})

    # ------------------------------------------------------------------ hyperparameters
    @property
    def hyperparams(self) -> dict[str, OptState]:
        """The hyperparameters injected with ``optax.inject_hyperparams``, by name, as the
        ``OptState`` Variables that hold them: read ``h["learning_rate"][...]``, write
        ``h["learning_rate"][...] = 1e-4`` (in place, also inside ``jax.jit``).

        A hyperparameter given as a schedule is recomputed from the step count on every
        update; writing it has no lasting effect.
        """
        found = _state(self.opt_state, PathContains("hyperparams"))
        by_name: dict[str, list[tuple[Path, Any]]] = {}
        for path, var in found.items():
            if path[-2:-1] == ("hyperparams",):
                by_name.setdefault(str(path[-1]), []).append((path, var))
        if not by_name:
            raise AttributeError(
                "Optimizer.hyperparams: this optimizer's tx has no injected "
                "hyperparameters. Wrap the optax constructor to make them state: "
                "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)."
            )
        twice = {k: v for k, v in by_name.items() if len(v) > 1}
        if twice:
            lines = [
                f"  {k}: " + ", ".join(format_path(p) for p, _ in v) for k, v in twice.items()
            ]
            raise ValueError(
                "Optimizer.hyperparams: several injected hyperparameters share a name:\n"
                + "\n".join(lines)
                + "\nRead them from optimizer.opt_state, where each has its own place."
            )
        return {k: v[0][1] for k, v in by_name.items()}

    def __repr__(self) -> str:
        child = self._child
        # A stand-in child (JAX mapping over trees) has no step to show.
        step = child["step"] if isinstance(child, (dict, _packed.Packed)) else child
        return (
            f"Optimizer(wrt={filter_repr(self.wrt)}, {len(self.paths)} Variable(s), step={step!r})"
        )


class _NoKey(PathKey):
    """The key of the optimizer's one child: it adds nothing to a path, so paths read
    ``("opt_state", 0, "count")``, ..., ``("step",)``, packed or not."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(())

    def __str__(self) -> str:
        return ""

    __repr__ = __str__


_NO_KEY = _NoKey()

# JAX's one child: {"opt_state": ..., "step": ...}, packed or not, so a packed optimizer's
# step counter travels in the optax state's buffers and a jitted call takes one Ref per
# buffer. JAX may rebuild an optimizer around a stand-in for it (a placeholder while
# mapping over trees); such an optimizer is only ever flattened again.


def _flatten_with_keys(opt: Optimizer) -> tuple[Any, Any]:
    return ((_NO_KEY, opt._child),), (opt.tx, opt.wrt, opt.paths)


def _flatten(opt: Optimizer) -> tuple[Any, Any]:
    return (opt._child,), (opt.tx, opt.wrt, opt.paths)


def _unflatten(aux: Any, children: Any) -> Optimizer:
    opt = object.__new__(Optimizer)
    opt.tx, opt.wrt, opt.paths = aux
    (opt._child,) = children
    return opt


jtu.register_pytree_with_keys(Optimizer, _flatten_with_keys, _unflatten, _flatten)


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
Optimizer.__module__ = "statetree"
