"""W1: split + merge of a layer stack (SPEC section 7: within 2x of jax.tree_util).

Every implementation holds the same model: ``n`` layers, each a 16x16 ``kernel`` and a
16-element ``bias``, where the last layer's kernel *is* the first layer's (one tied
weight, as in tied embeddings). One timed call is a full round trip, structure and
values apart and back together again:

- raw JAX (baseline): ``jax.tree_util.tree_flatten`` + ``tree_unflatten`` of the nested
  dict of plain arrays. Pytrees have no identity, so the tie is just the same array at
  two leaves, and unflatten can give back nothing more.
- statetree: ``st.split`` + ``st.merge`` of the mutable tree (``st.Param`` on
  ``jax.Ref``). The tie must survive: one Variable in the State, one object after merge.
- Flax NNX: graph-mode ``nnx.split`` + ``nnx.merge`` of an ``nnx.Module`` of
  ``nnx.Param``; NNX also keeps the tie.
- Equinox: ``eqx.partition(model, eqx.is_array)`` + ``eqx.combine``: pytrees again.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W1 split+merge"
UNIT = "us"
WIDTH = 16


def _arrays(n: int) -> list[dict[str, jax.Array]]:
    """``n`` layers of plain arrays; distinct values so nothing is accidentally shared."""
    rng = np.random.default_rng(0)
    layers = [
        {
            "kernel": jnp.asarray(rng.standard_normal((WIDTH, WIDTH), np.float32)),
            "bias": jnp.asarray(rng.standard_normal(WIDTH, np.float32)),
        }
        for _ in range(n)
    ]
    layers[-1]["kernel"] = layers[0]["kernel"]  # the tie
    return layers


# --- one round trip per implementation ---------------------------------------------------
# Each `make_*` builds the model once and returns (round_trip, check): `round_trip()` is
# what is timed, `check(result)` asserts that the result is the model again.


def make_raw_jax(layers: list[dict[str, jax.Array]]) -> tuple[Callable[[], Any], Callable]:
    tree = {"layers": layers}

    def round_trip() -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def check(out: Any) -> None:
        assert len(jax.tree_util.tree_leaves(out)) == 2 * len(layers)

    return round_trip, check


def make_statetree(layers: list[dict[str, jax.Array]]) -> tuple[Callable[[], Any], Callable]:
    kernel0 = st.Param(layers[0]["kernel"])
    frozen = [
        {
            "kernel": kernel0 if i in (0, len(layers) - 1) else st.Param(lay["kernel"]),
            "bias": st.Param(lay["bias"]),
        }
        for i, lay in enumerate(layers)
    ]
    tree = st.mutable({"layers": frozen})

    def round_trip() -> Any:
        graphdef, state = st.split(tree)
        return st.merge(graphdef, state)

    def check(out: Any) -> None:
        _, state = st.split(tree)
        assert len(state) == 2 * len(layers) - 1, "the tied kernel is stored once"
        first, last = out["layers"][0]["kernel"], out["layers"][-1]["kernel"]
        assert first is last and first.mutable, "the tie is one mutable Variable again"

    return round_trip, check


def make_nnx(layers: list[dict[str, jax.Array]]) -> tuple[Callable[[], Any], Callable]:
    from flax import nnx

    class Layer(nnx.Module):
        def __init__(self, kernel: nnx.Param, bias: jax.Array) -> None:
            self.kernel = kernel
            self.bias = nnx.Param(bias)

    class Stack(nnx.Module):
        def __init__(self) -> None:
            tied = nnx.Param(layers[0]["kernel"])
            self.layers = nnx.List(
                Layer(tied if i in (0, len(layers) - 1) else nnx.Param(lay["kernel"]), lay["bias"])
                for i, lay in enumerate(layers)
            )

    model = Stack()

    def round_trip() -> Any:
        graphdef, state = nnx.split(model, graph=True)
        return nnx.merge(graphdef, state)

    def check(out: Any) -> None:
        _, state = nnx.split(model, graph=True)
        assert len(jax.tree_util.tree_leaves(state)) == 2 * len(layers) - 1
        assert out.layers[0].kernel is out.layers[-1].kernel, "NNX keeps the tie"

    return round_trip, check


def make_equinox(layers: list[dict[str, jax.Array]]) -> tuple[Callable[[], Any], Callable]:
    import equinox as eqx

    class Layer(eqx.Module):
        kernel: jax.Array
        bias: jax.Array

    class Stack(eqx.Module):
        layers: tuple[Layer, ...]

    model = Stack(tuple(Layer(lay["kernel"], lay["bias"]) for lay in layers))

    def round_trip() -> Any:
        arrays, static = eqx.partition(model, eqx.is_array)
        return eqx.combine(arrays, static)

    def check(out: Any) -> None:
        assert len(jax.tree_util.tree_leaves(out)) == 2 * len(layers)

    return round_trip, check


IMPLS: dict[str, tuple[Callable, str]] = {
    "raw JAX (tree_util)": (make_raw_jax, "tie not kept: pytrees have no identity"),
    "statetree": (make_statetree, "tie kept (checked)"),
    "Flax NNX (graph mode)": (make_nnx, "tie kept (checked)"),
    "Equinox": (make_equinox, "tie not kept: pytrees have no identity"),
}
BASELINE = "raw JAX (tree_util)"


def _no_result(fn: Callable[[], Any]) -> Callable[[], None]:
    def call() -> None:
        fn()

    return call


def run(quick: bool, *, sizes: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows for each size (layers); ``sizes`` overrides the default (10, 100, 1000)."""
    if sizes is None:
        sizes = (10, 100) if quick else (10, 100, 1000)
    rows = []
    for n in sizes:
        case = f"{n:,} layers ({2 * n - 1:,} arrays)"
        layers = _arrays(n)
        ready, notes = {}, {}
        for impl, (make, note) in IMPLS.items():
            try:
                round_trip, check = make(layers)
                check(round_trip())
                ready[impl], notes[impl] = round_trip, note
            except Exception as e:  # a peer that cannot run is shown, not hidden
                notes[impl] = f"could not run: {type(e).__name__}: {e}".splitlines()[0][:100]
        # All implementations timed in interleaved rounds: their ratios are what matter.
        # Pure Python work: the calls return None, so nothing is walked to block on.
        times = time_many_us({k: _no_result(f) for k, f in ready.items()}, quick=quick)
        for impl in IMPLS:
            value = times.get(impl, float("nan"))
            rows.append(
                row(WORKLOAD, case, impl, value, UNIT, baseline=impl == BASELINE, note=notes[impl])
            )
    return rows
