"""W4 scan over layers: a forward pass through N stacked blocks with jax.lax.scan.

Each block is the guide's Linear -> BatchNorm (running statistics updated) -> Dropout
(key advanced) -> gelu -> Linear, batch 32, widths 16 -> 64 -> 16. Every implementation
computes the same numbers and leaves the new per-layer statistics and keys behind:

- "raw JAX (plain scan)": pure functions over dicts of stacked arrays; the state is
  threaded (returned as scan outputs, donated and passed back in). The baseline.
- "statetree (recipe)": docs/recipes/scan-over-layers.md; a mutable stack, the scan reads
  ``st.freeze(params)`` and the per-layer state as values, each step writes its layer's
  state in place into local refs, and ``st.update`` writes the stacked state once.
- "scan over refs (naive)": ``jax.lax.scan`` directly over the stack of mutable Variables.
- "Flax NNX": the guide's way, ref-backed ``nnx`` Variables (``nnx.var_defaults(ref=True)``)
  created with ``nnx.vmap`` and scanned with ``jax.lax.scan``.

Cases, per depth (8, 32, 128 layers), timed by the harness's one timer (interleaved,
median per call):

- "run": time per jitted forward call, in a loop of calls. It includes JAX's dispatch,
  which takes a slow Python path for every ``jax.Ref`` argument (~10 us each here; the
  block has 9 Variables), a fixed cost that shows at small depths.
- "scan only": time per forward when 20 forwards run inside one jitted call
  (``jax.lax.fori_loop``): the scan's own cost, dispatch amortised.
- "compile": trace + lower + compile of a fresh function (flat in depth for a scan), one
  measurement: a compile cannot be repeated without its caches.
Run alone: ``python -m benchmarks.bench_scan``.
"""

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import statetree as st
from benchmarks._harness import row, time_many_us

WORKLOAD = "W4 scan over layers"
BASELINE = "raw JAX (plain scan)"
DEPTHS = (8, 32, 128)
BATCH, DIN, DMID = 32, 16, 64
MOMENTUM, EPS, RATE = 0.9, 1e-5, 0.1


# ---------------------------------------------------------------------------- statetree
class RngState(st.Variable):
    differentiable = False


@st.register_node
class Linear:
    def __init__(self, key: jax.Array, din: int, dout: int) -> None:
        self.kernel = st.Param(jax.random.normal(key, (din, dout)) / jnp.sqrt(din))
        self.bias = st.Param(jnp.zeros(dout))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel + self.bias


@st.register_node
class BatchNorm:
    def __init__(self, dim: int) -> None:
        self.scale, self.bias = st.Param(jnp.ones(dim)), st.Param(jnp.zeros(dim))
        self.mean, self.var = st.BatchStat(jnp.zeros(dim)), st.BatchStat(jnp.ones(dim))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, var = x.mean(axis=0), x.var(axis=0)
        self.mean[...] = MOMENTUM * self.mean + (1 - MOMENTUM) * mean
        self.var[...] = MOMENTUM * self.var + (1 - MOMENTUM) * var
        return (x - mean) * jax.lax.rsqrt(var + EPS) * self.scale + self.bias


@st.register_node
class Dropout:
    def __init__(self, key: jax.Array) -> None:
        self.key = RngState(jax.random.key_data(key))

    def __call__(self, x: jax.Array) -> jax.Array:
        key, sub = jax.random.split(self.key[...])
        self.key[...] = key
        keep = jax.random.bernoulli(sub, 1 - RATE, x.shape)
        return jnp.where(keep, x / (1 - RATE), 0.0)


@st.register_node
class Block:
    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = Linear(k1, DIN, DMID)
        self.bn = BatchNorm(DMID)
        self.dropout = Dropout(k2)
        self.linear_out = Linear(k3, DMID, DIN)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_out(jax.nn.gelu(self.dropout(self.bn(self.linear(x)))))


_init_stack = jax.jit(jax.vmap(Block))  # one compile per depth, shared by every stack


def make_stack(depth: int, packed: bool = False) -> Block:
    keys = jax.random.split(jax.random.key(0), depth)
    return st.mutable(_init_stack(keys), packed=packed)


def recipe(stack: Block, x: jax.Array) -> jax.Array:
    graphdef, params, rest = st.split(stack, st.Param, ...)

    def step(x: jax.Array, layer: Any) -> tuple[jax.Array, Any]:
        layer_params, layer_rest = layer
        layer_rest = st.mutable(layer_rest)
        x = st.merge(graphdef, layer_params, layer_rest)(x)
        return x, st.freeze(layer_rest)

    x, new_rest = jax.lax.scan(step, x, (st.freeze(params), st.freeze(rest)))
    st.update(stack, new_rest)
    return x


def naive(stack: Block, x: jax.Array) -> jax.Array:
    return jax.lax.scan(lambda x, block: (block(x), None), x, stack)[0]


# ---------------------------------------------------------------------------- raw JAX
def raw_arrays(stack: Block) -> tuple[dict, dict]:
    s = st.unbox(st.freeze(stack))
    params = {
        "k1": s.linear.kernel,
        "b1": s.linear.bias,
        "scale": s.bn.scale,
        "shift": s.bn.bias,
        "k2": s.linear_out.kernel,
        "b2": s.linear_out.bias,
    }
    return params, {"mean": s.bn.mean, "var": s.bn.var, "key": s.dropout.key}


def raw(params: dict, state: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    def step(x: jax.Array, layer: Any) -> tuple[jax.Array, dict]:
        p, s = layer
        h = x @ p["k1"] + p["b1"]
        mean, var = h.mean(axis=0), h.var(axis=0)
        new = {
            "mean": MOMENTUM * s["mean"] + (1 - MOMENTUM) * mean,
            "var": MOMENTUM * s["var"] + (1 - MOMENTUM) * var,
        }
        h = (h - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["shift"]
        new["key"], sub = jax.random.split(s["key"])
        h = jnp.where(jax.random.bernoulli(sub, 1 - RATE, h.shape), h / (1 - RATE), 0.0)
        return jax.nn.gelu(h) @ p["k2"] + p["b2"], new

    return jax.lax.scan(step, x, (params, state))


# ---------------------------------------------------------------------------- Flax NNX
def nnx_setup(depth: int) -> tuple[Callable[..., Any], Callable[[], tuple]] | None:
    try:
        from flax import nnx
    except ImportError:
        return None

    class NNXBlock(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.linear = nnx.Linear(DIN, DMID, rngs=rngs)
            self.bn = nnx.BatchNorm(DMID, momentum=MOMENTUM, epsilon=EPS, rngs=rngs)
            self.dropout = nnx.Dropout(RATE, rngs=rngs)
            self.linear_out = nnx.Linear(DMID, DIN, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.linear_out(nnx.gelu(self.dropout(self.bn(self.linear(x)))))

    @nnx.vmap
    def create(rngs: nnx.Rngs) -> NNXBlock:
        return NNXBlock(rngs)

    def fn(stack: Any, x: jax.Array) -> jax.Array:
        return jax.lax.scan(lambda x, block: (block(x), None), x, stack)[0]

    def make() -> tuple:
        with nnx.var_defaults(ref=True):
            return (create(nnx.Rngs(0).split(depth)),)

    return fn, make


# ---------------------------------------------------------------------------- timing
def _compile_ms(fn: Callable[..., Any], args: tuple) -> float:
    # A fresh function object each time, so no trace or compile cache is hit.
    def fresh(*a: Any) -> Any:
        return fn(*a)

    start = time.perf_counter()
    jax.jit(fresh).lower(*args).compile()
    return (time.perf_counter() - start) * 1e3


INNER = 20  # forward passes per call in the "scan only" case


class _Impl(NamedTuple):
    call: Callable[[], Any]  # one jitted forward call
    looped: Callable[[], Any]  # one jitted call running INNER forwards in a fori_loop
    compile_ms: Callable[[], float]


def _looped(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fn(*args, x)`` run INNER times in one jitted call (refs captured by the loop)."""

    def many(*args_and_x: Any) -> jax.Array:
        *args, x = args_and_x
        return jax.lax.fori_loop(0, INNER, lambda i, x: fn(*args, x), x)

    return jax.jit(many)


def _raw_looped(params: dict, state: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    return jax.lax.fori_loop(0, INNER, lambda i, c: raw(params, c[1], c[0]), (x, state))


def _impls(depth: int, x: jax.Array) -> dict[str, _Impl]:
    """Each implementation on its own freshly made stack."""
    impls = {}
    params, state = raw_arrays(make_stack(depth))
    raw_jit = jax.jit(raw, donate_argnums=1)
    raw_looped_jit = jax.jit(_raw_looped, donate_argnums=1)
    box = [state]

    def raw_call() -> jax.Array:
        y, box[0] = raw_jit(params, box[0], x)
        return y

    def raw_looped_call() -> jax.Array:
        y, box[0] = raw_looped_jit(params, box[0], x)
        return y

    impls[BASELINE] = _Impl(
        raw_call, raw_looped_call, lambda: _compile_ms(raw, (params, box[0], x))
    )
    for name, fn, packed in (
        ("statetree (recipe)", recipe, False),
        ("statetree (recipe, packed stack)", recipe, True),
        ("scan over refs (naive)", naive, False),
    ):
        stack = make_stack(depth, packed)
        impls[name] = _Impl(
            functools.partial(jax.jit(fn), stack, x),
            functools.partial(_looped(fn), stack, x),
            functools.partial(_compile_ms, fn, (stack, x)),
        )
    nnx = nnx_setup(depth)
    if nnx is not None:
        fn, make = nnx
        args = make()
        impls["Flax NNX"] = _Impl(
            functools.partial(jax.jit(fn), *args, x),
            functools.partial(_looped(fn), *args, x),
            lambda: _compile_ms(fn, (*make(), x)),
        )
    return impls


def run(quick: bool, *, depths: Sequence[int] = DEPTHS) -> list[dict]:
    """Rows for each depth (layers) in ``depths``. A quick run times the "compile" case
    for the baseline only: every other implementation's function has just been compiled
    by the "run" case, and a compile costs far more than the timing does."""
    x = jax.random.normal(jax.random.key(1), (BATCH, DIN))
    rows: list[dict] = []
    for depth in depths:
        impls = _impls(depth, x)
        # The one timer: implementations interleaved, median ms per call.
        run = time_many_us({name: impl.call for name, impl in impls.items()}, quick=quick)
        scan = time_many_us({name: impl.looped for name, impl in impls.items()}, quick=quick)
        for name, impl in impls.items():
            cases = [
                (f"{depth} layers, run", run[name] / 1e3),
                (f"{depth} layers, scan only", scan[name] / 1e3 / INNER),
            ]
            if not quick or name == BASELINE:
                cases.append((f"{depth} layers, compile", impl.compile_ms()))
            for case, value in cases:
                rows.append(row(WORKLOAD, case, name, value, "ms", baseline=name == BASELINE))
    return rows


def _print(rows: list[dict]) -> None:
    base = {(r["case"]): r["value"] for r in rows if r["baseline"]}
    print(f"{rows[0]['workload']}")
    for r in rows:
        ratio = r["value"] / base[r["case"]]
        print(f"  {r['case']:<20} {r['impl']:<24} {r['value']:>9.3f} {r['unit']:<3} {ratio:5.2f}x")


if __name__ == "__main__":
    _print(run(quick=False))
