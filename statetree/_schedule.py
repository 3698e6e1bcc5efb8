"""Computed writes into packed slots, ordered so that XLA updates the buffers in place.

Inside ``jax.jit`` a packed buffer is one value, and every slot write makes a new
version of it (a dynamic-update-slice). XLA writes a version in place of the one before
only when nothing reads that earlier version afterwards. An optimizer step that first
reads every slot (parameters, moments) and then writes them all breaks that: each new
value is computed from a slice of the *first* version, which therefore stays alive
across the whole chain of writes, so XLA copies the buffer before writing (compiled
memory: a temporary as large as the buffer, per buffer written).

:func:`write_in_place` computes the new values in another order. It traces the whole
computation once (``values = compute(reads)``, one value per target slot) into a jaxpr,
then evaluates it output by output: just before a slot is written, the part of the
jaxpr that output needs is evaluated on *fresh* reads of the slots it depends on (read
from the buffer's current version, which still holds their old values), and on re-reads
of slots already written where it depends on their new values (optax's Adam computes the
parameter update from the new moments). Every read of a version then feeds only the
write that makes the next version, which XLA does in place. A value computed for one
output is reused by later ones while the buffers it was read from are unwritten since
(Adam's bias correction, shared by every parameter, is computed once): the equations,
their numbers and what they share are those of the straightforward order, and results
are bit-identical to it. (Sharing matters: XLA simplifies ``x / c`` into ``x * (1/c)``
when the broadcast ``c`` has one user and into something else when it has several.)

Measured (``benchmarks/bench_memory.py``, 64 float32 weights of 128x128 with Adam):
the step's temporaries fall from 16.3 MiB (copies of both buffers) to 4.3 MiB, which is
the slices of the weights that the matrix products read, a copy XLA makes for any
weight that is a slice of a larger buffer.

The order is refused (nothing written, the caller writes its own way) when an output
needs the *old* value of a slot already overwritten (the Lion optimizer's update reads
the old momentum), when the computation has effects, or when evaluating outputs
separately would repeat too much work (a global norm shared by every output).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex

from ._views import View

__all__ = ["write_in_place"]

# Equations that pass a value through unchanged: a slot written with their output also
# holds their input.
_SAME_VALUE = frozenset({"stop_gradient", "copy", "copy_p"})

# Planning follows each output's equations separately, counting what outputs share once
# per output (a global norm is shared by all): allowed up to this many visits per
# equation of the traced computation, else the order is refused.
_REPEAT = 8


def write_in_place(
    compute: Callable[[list[Any]], list[Any]], views: Sequence[View], order: Sequence[int]
) -> bool:
    """Write ``compute(reads)[i]`` into ``views[i]`` for every ``i``, where ``reads[i]``
    is the current value of ``views[i]``, in the slot order ``order``, each new value
    computed from fresh reads just before its write. Returns False, having written
    nothing, when that order cannot reproduce ``compute`` (see the module docstring).
    Errors raised by ``compute`` propagate, before any write."""
    avals = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in views]
    closed = jax.make_jaxpr(compute)(avals)
    jaxpr = closed.jaxpr
    if jaxpr.effects or len(jaxpr.outvars) != len(views):
        return False
    steps = _plan(jaxpr, order)
    if steps is None:
        return False
    consts = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    # Values computed so far, with the version of each buffer they were read from
    # (counted in writes): one is reused while those buffers are unwritten since, so
    # work shared by several outputs (Adam's bias correction) is done once, as in the
    # straightforward order, and nothing reads a version after the next was written.
    known: dict[Any, tuple[Any, dict[int, int]]] = {}
    writes: dict[int, int] = {}

    def fresh(deps: dict[int, int]) -> bool:
        return all(writes.get(b, 0) == n for b, n in deps.items())

    def value_of(atom: Any) -> tuple[Any, dict[int, int]]:
        if isinstance(atom, jex.Literal):
            return atom.val, {}
        if atom in consts:
            return consts[atom], {}
        return known[atom]

    for target, eqns, reads in steps:
        out = jaxpr.outvars[target]
        if not eqns and reads == {out: target}:
            continue  # the slot keeps its value: nothing to write
        for v, slot in reads.items():
            if v not in known or not fresh(known[v][1]):
                buffer = id(views[slot].buffer)
                known[v] = views[slot]._read(), {buffer: writes.get(buffer, 0)}
        for e in eqns:
            eqn = jaxpr.eqns[e]
            first = eqn.outvars[0]
            if first in known and fresh(known[first][1]):
                continue
            args, deps = [], {}
            for atom in eqn.invars:
                arg, arg_deps = value_of(atom)
                args.append(arg)
                deps.update(arg_deps)
            with eqn.ctx.manager:
                ans = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
            results = ans if eqn.primitive.multiple_results else [ans]
            for v, a in zip(eqn.outvars, results, strict=True):
                known[v] = a, deps
        views[target][...] = value_of(out)[0]
        buffer = id(views[target].buffer)
        writes[buffer] = writes.get(buffer, 0) + 1
    return True


Step = tuple[int, list[int], dict[Any, int]]


def _plan(jaxpr: Any, order: Sequence[int]) -> list[Step] | None:
    """Per output, in ``order``: the equations it needs (in jaxpr order) and the slot
    each of its inputs is read from; None when an output needs the old value of a slot
    written before it, or the outputs share too much work."""
    producer = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in eqn.outvars}
    inputs = {v: i for i, v in enumerate(jaxpr.invars)}
    consts = set(jaxpr.constvars)
    holds: dict[Any, int] = {}  # a value -> the slot already written with it
    done: set[int] = set()
    budget = _REPEAT * len(jaxpr.eqns) + 4 * len(order)
    steps: list[Step] = []
    for target in order:
        out = jaxpr.outvars[target]
        eqns: set[int] = set()
        reads: dict[Any, int] = {}
        stack = [] if isinstance(out, jex.Literal) else [out]
        seen: set[Any] = set()
        while stack:
            v = stack.pop()
            if v in seen or v in consts:
                continue
            seen.add(v)
            if v in holds:
                reads[v] = holds[v]
            elif v in inputs:
                if inputs[v] in done:
                    return None  # needs a slot's old value after it was overwritten
                reads[v] = inputs[v]
            else:
                e = producer[v]
                if e in eqns:
                    continue
                eqns.add(e)
                budget -= 1
                if budget < 0:
                    return None
                stack.extend(a for a in jaxpr.eqns[e].invars if not isinstance(a, jex.Literal))
        steps.append((target, sorted(eqns), reads))
        done.add(target)
        v = out
        while not isinstance(v, jex.Literal):
            holds.setdefault(v, target)
            e = producer.get(v)
            if e is None or jaxpr.eqns[e].primitive.name not in _SAME_VALUE:
                break
            v = jaxpr.eqns[e].invars[0]
    return steps
