"""W5: natural per-Variable writes in a jitted step, packed.

Users' own code updates Variables one by one: EMA weights, counters, per-layer
statistics. Each step here reads and writes every Variable of a tree of ``n`` small
Variables (64 float32 each) with ``v[...] = 0.9 * v[...] + 0.1 * x`` and returns the sum
of the new values (read back from the Variables after the write), for n = 100 and 1,000:

- "raw JAX functional + donation" (the baseline): the same arithmetic on a dict of
  arrays, returned and donated;
- "statetree (packed)": ``st.mutable(tree, packed=True)``, written in place, nothing
  returned but the sum;
- "statetree (plain)": the same on the default form, one ``jax.Ref`` per Variable;
- "raw JAX one Ref, slot writes": one flat ``jax.Ref``, a slice written per Variable and
  read back from the Ref (what a packed step did before reads after writes reused the
  written value);
- "raw JAX one Ref, one write": the same numbers written as one whole-buffer update (the
  floor for any in-place form).

Timing: the harness's one timer (:func:`benchmarks._harness.time_many_us`).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W5 natural writes"
BASELINE = "raw JAX functional + donation"
SIZE = 64


def _values(n: int) -> dict[str, jax.Array]:
    return {f"v{i:04d}": jnp.full((SIZE,), float(i) / n) for i in range(n)}


def _functional(values: dict[str, jax.Array], x: jax.Array) -> Callable[[], Any]:
    def step(p: dict[str, Any], x: Any) -> tuple[dict[str, Any], Any]:
        new = {k: 0.9 * v + 0.1 * x for k, v in p.items()}
        return new, sum(jnp.sum(v) for v in new.values())

    jitted = jax.jit(step, donate_argnums=0)
    carry = [jax.tree.map(jnp.copy, values)]

    def run() -> Any:
        carry[0], total = jitted(carry[0], x)
        return total

    return run


def _statetree(values: dict[str, jax.Array], x: jax.Array, packed: bool) -> Callable[[], Any]:
    tree = st.mutable({k: st.Variable(v) for k, v in values.items()}, packed=packed)

    @jax.jit
    def step(tree: Any, x: Any) -> Any:
        total = 0.0
        for k in values:
            v = tree[k]
            v[...] = 0.9 * v[...] + 0.1 * x
            total = total + jnp.sum(v[...])
        return total

    return lambda: step(tree, x)


def _one_ref(n: int, x: jax.Array, whole: bool) -> Callable[[], Any]:
    ref = jax.new_ref(jnp.zeros(n * SIZE))

    @jax.jit
    def slots(r: Any, x: Any) -> Any:
        total = 0.0
        for i in range(n):
            part = slice(i * SIZE, (i + 1) * SIZE)
            r[part] = 0.9 * r[part] + 0.1 * x
            total = total + jnp.sum(r[part])
        return total

    @jax.jit
    def one_write(r: Any, x: Any) -> Any:
        new = 0.9 * r[...] + 0.1 * jnp.tile(x, n)
        r[...] = new
        return jnp.sum(new)

    step = one_write if whole else slots
    return lambda: step(ref, x)


def run(quick: bool, *, counts: Sequence[int] | None = None) -> list[dict[str, Any]]:
    counts = counts if counts is not None else ((10, 50) if quick else (100, 1000))
    rows = []
    x = jnp.ones((SIZE,))
    for n in counts:
        values = _values(n)
        impls = {
            BASELINE: _functional(values, x),
            "statetree (packed)": _statetree(values, x, packed=True),
            "statetree (plain)": _statetree(values, x, packed=False),
            "raw JAX one Ref, slot writes": _one_ref(n, x, whole=False),
            "raw JAX one Ref, one write": _one_ref(n, x, whole=True),
        }
        times = time_many_us(impls, quick=quick)
        case = f"{n:,} Variables ({SIZE} float32)"
        for impl, us in times.items():
            rows.append(row(WORKLOAD, case, impl, us, "us", baseline=impl == BASELINE))
    return rows


def targets(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Issue 15, target 1: packed no slower than the baseline (<= 1.0) at each count."""
    at = {(r["case"], r["impl"]): r["value"] for r in rows}
    return {
        f"{case}: statetree (packed) / {BASELINE} (<= 1.0)": value / at[(case, BASELINE)]
        for (case, impl), value in at.items()
        if impl == "statetree (packed)" and (case, BASELINE) in at
    }


if __name__ == "__main__":
    import sys

    table = run(quick="--quick" in sys.argv)
    for r in table:
        print(f"{r['case']:28s} {r['impl']:34s} {r['value']:10.1f} {r['unit']}")
    for name, ratio in targets(table).items():
        print(f"{name}: {ratio:.2f}")
