"""W6: eager whole-tree operations at scale: 1,000 / 10,000 / 100,000 Variables.

A tree of ``n`` small Variables (``n / 2`` layers, each a 4x4 ``kernel`` and a 4-element
``bias``, float32), mutable (the default form, one ``jax.Ref`` each). One timed call:

- "jax.tree_util flatten+unflatten" (the baseline): the same nested dict of plain
  arrays, flattened and rebuilt;
- "st.freeze": a frozen snapshot of the mutable tree (every Ref read);
- "st.update": a State of new values for every Variable written into the tree in place
  (every Ref written; what a checkpoint restore does);
- "st.split + st.merge": the round trip of W1 on this tree;
- "st.unbox": the tree's current values as plain arrays.

The target (issue 15): ``st.freeze`` and ``st.update`` within 10x of the baseline at 10k
and 100k Variables. Timing: the harness's one timer; fewer repeats at 100k.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W6 eager ops at scale"
BASELINE = "jax.tree_util flatten+unflatten"


def _arrays(n: int) -> dict[str, dict[str, jax.Array]]:
    rng = np.random.default_rng(0)
    kernels = jnp.asarray(rng.standard_normal((n // 2, 4, 4), np.float32))
    biases = jnp.asarray(rng.standard_normal((n // 2, 4), np.float32))
    return {f"layer{i:06d}": {"kernel": kernels[i], "bias": biases[i]} for i in range(n // 2)}


def run(quick: bool, *, sizes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    sizes = sizes if sizes is not None else ((200,) if quick else (1_000, 10_000, 100_000))
    rows = []
    for n in sizes:
        arrays = _arrays(n)
        tree = st.mutable(arrays)
        new_state = st.state(jax.tree.map(lambda a: a + 1, arrays))

        def tree_util(arrays: Any = arrays) -> None:
            leaves, treedef = jax.tree_util.tree_flatten(arrays)
            jax.tree_util.tree_unflatten(treedef, leaves)

        def freeze(tree: Any = tree) -> Any:
            return st.freeze(tree)

        def update(tree: Any = tree, state: Any = new_state) -> None:
            st.update(tree, state)

        def split_merge(tree: Any = tree) -> None:
            st.merge(*st.split(tree))

        def unbox(tree: Any = tree) -> Any:
            return st.unbox(tree)

        impls = {
            BASELINE: tree_util,
            "st.freeze": freeze,
            "st.update": update,
            "st.split + st.merge": split_merge,
            "st.unbox": unbox,
        }
        times = time_many_us(impls, quick=quick, repeats=5 if n >= 100_000 else None)
        case = f"{n:,} Variables"
        for impl, us in times.items():
            rows.append(row(WORKLOAD, case, impl, us / 1e3, "ms", baseline=impl == BASELINE))
    return rows


def targets(rows: list[dict[str, Any]]) -> dict[str, float]:
    """st.freeze and st.update over the baseline (issue 15: <= 10 at 10k and 100k)."""
    at = {(r["case"], r["impl"]): r["value"] for r in rows}
    return {
        f"{case}: {impl} / {BASELINE} (<= 10)": value / at[(case, BASELINE)]
        for (case, impl), value in at.items()
        if impl in ("st.freeze", "st.update") and (case, BASELINE) in at
    }


if __name__ == "__main__":
    import sys

    table = run(quick="--quick" in sys.argv)
    for r in table:
        print(f"{r['case']:20s} {r['impl']:34s} {r['value']:10.2f} {r['unit']}")
    for name, ratio in targets(table).items():
        print(f"{name}: {ratio:.2f}")
