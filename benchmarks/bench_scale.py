"""W6: eager whole-tree operations at scale: 1,000 / 10,000 / 100,000 Variables.

A tree of ``n`` small Variables (``n / 2`` layers, each a 4x4 ``kernel`` and a 4-element
``bias``, float32), mutable (the default form, one ``jax.Ref`` each). One timed call:

- "jax.tree_util flatten+unflatten" (the baseline): the same nested dict of plain
  arrays, flattened and rebuilt;
- the floor (see below): ``n`` fresh copies of the tree's arrays, JAX alone;
- "st.freeze": a frozen snapshot of the mutable tree (every Ref read);
- "st.update": a State of new values for every Variable written into the tree in place
  (every Ref written; what a checkpoint restore does);
- "st.split + st.merge": the round trip of W1 on this tree;
- "st.unbox": the tree's current values as plain arrays.

The target (issue 15): ``st.freeze`` and ``st.update`` within 10x of the baseline at 10k
and 100k Variables. Timing: the harness's one timer; fewer repeats at 100k.

**The floor.** A freeze must hand out a fresh array per Variable, and an update must give
each Ref a fresh one: JAX donates a Ref's buffer to the next jitted call that writes the
Ref, which deletes any other array sharing that buffer, and a Ref given the caller's
array would let a later in-place step delete it under the caller. The cheapest way JAX
offers to make ``n`` fresh arrays is one jitted function that copies a list of arrays,
called once per chunk of 256 arrays of one shape (a few microseconds per output array,
most of it the runtime's per-buffer work: per-array ``jax.device_put`` copies and
calling the compiled executable directly were measured slower or within noise). That row
does only that, with no tree, no checks and no Variables: no eager freeze or update can
be cheaper, and ``targets()`` reports both operations against it beside the 10x target.
An update also frees each Ref's old buffer, which the floor does not.

The 100k case also times ``st.restore`` of a checkpoint of the tree (``st.save`` once,
outside the timing; the harness's calibration call warms it up, then three repeats):
issue 15 asks that it not take minutes.
"""

import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W6 eager ops at scale"
BASELINE = "jax.tree_util flatten+unflatten"
FLOOR = "floor: fresh copies of n arrays (one jitted copy per chunk)"
CHUNK = 256  # arrays per jitted copy, as statetree._write.bulk copies them
RESTORE = "st.restore (checkpoint of the tree)"


def _arrays(n: int) -> dict[str, dict[str, jax.Array]]:
    rng = np.random.default_rng(0)
    kernels = jnp.asarray(rng.standard_normal((n // 2, 4, 4), np.float32))
    biases = jnp.asarray(rng.standard_normal((n // 2, 4), np.float32))
    return {f"layer{i:06d}": {"kernel": kernels[i], "bias": biases[i]} for i in range(n // 2)}


@jax.jit
def _copies(arrays: list[jax.Array]) -> list[jax.Array]:
    return [jnp.copy(a) for a in arrays]


def _floor(arrays: Any) -> Any:
    """The floor's timed call: fresh copies of the tree's arrays, one jitted copy per
    chunk of ``CHUNK`` arrays of one shape (the chunks are cut outside the timing)."""
    by_shape: dict[Any, list[jax.Array]] = {}
    for leaf in jax.tree_util.tree_leaves(arrays):
        by_shape.setdefault(leaf.shape, []).append(leaf)
    chunks = [g[i : i + CHUNK] for g in by_shape.values() for i in range(0, len(g), CHUNK)]

    def floor() -> list[jax.Array]:
        out: list[jax.Array] = []
        for chunk in chunks:
            out.extend(_copies(chunk))
        return out

    return floor


def _restore_us(tree: Any, quick: bool) -> float:
    """``st.restore`` of a checkpoint of ``tree`` into it, timed by the harness."""
    directory = tempfile.mkdtemp(prefix="statetree-w6-")
    try:
        path = f"{directory}/checkpoint"
        st.save(path, tree)
        (us,) = time_many_us(
            {RESTORE: lambda: st.restore(path, tree)}, quick=quick, repeats=3, warmup=0
        ).values()
        return us
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(
    quick: bool, *, sizes: Sequence[int] | None = None, restore_at: int = 100_000
) -> list[dict[str, Any]]:
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
            FLOOR: _floor(arrays),
            "st.freeze": freeze,
            "st.update": update,
            "st.split + st.merge": split_merge,
            "st.unbox": unbox,
        }
        times = time_many_us(impls, quick=quick, repeats=5 if n >= 100_000 else None)
        if n >= restore_at:
            times[RESTORE] = _restore_us(tree, quick)
        case = f"{n:,} Variables"
        for impl, us in times.items():
            note = "JAX alone: no eager freeze/update can be cheaper" if impl == FLOOR else ""
            rows.append(
                row(WORKLOAD, case, impl, us / 1e3, "ms", baseline=impl == BASELINE, note=note)
            )
    return rows


def targets(rows: list[dict[str, Any]]) -> dict[str, float]:
    """st.freeze and st.update over the baseline (issue 15: <= 10 at 10k and 100k), and
    over the floor (how close they are to what JAX itself needs)."""
    at = {(r["case"], r["impl"]): r["value"] for r in rows}
    out = {}
    for (case, impl), value in at.items():
        if impl not in ("st.freeze", "st.update"):
            continue
        if (case, BASELINE) in at:
            out[f"{case}: {impl} / {BASELINE} (<= 10)"] = value / at[(case, BASELINE)]
        if (case, FLOOR) in at:
            out[f"{case}: {impl} / floor"] = value / at[(case, FLOOR)]
    return out


if __name__ == "__main__":
    import sys

    table = run(quick="--quick" in sys.argv)
    for r in table:
        print(f"{r['case']:20s} {r['impl']:60s} {r['value']:10.2f} {r['unit']}")
    for name, ratio in targets(table).items():
        print(f"{name}: {ratio:.2f}")
