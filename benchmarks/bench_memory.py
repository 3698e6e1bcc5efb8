"""W3: compiled memory of one Adam step (SPEC section 7: no second copy in place).

The model is ``depth`` square float32 weight matrices: 4 of 2048x2048 (16 MiB each),
which stay one Ref each when packed (``st.mutable(..., packed=True)`` leaves arrays of
2**20 elements or more alone), and 64 of 128x128 (64 KiB each), which packing puts in
one buffer; the step computes the gradient of a small loss, runs ``optax.adam`` and stores
the new parameters and optimizer state. Nothing is run: each step is lowered and
compiled, and XLA's ``memory_analysis()`` reports, in MiB:

- arguments, outputs, temp: the buffers the step takes, returns and uses in between;
- aliased: output bytes written into argument buffers (no new allocation);
- live (args + outputs - aliased): parameters and optimizer state held at once. The
  claim to verify: in place this is *one* copy (outputs aliased to inputs), as with
  donation; without donation it is two;
- peak (live + temp): everything the step needs at once. Without donation XLA uses the
  fresh output buffers as scratch, so its temp is smaller and the peak ratio below 2x.

Implementations: the functional ``jax.jit`` step with ``donate_argnums`` (baseline: the
limit), the same without donation, statetree's in-place step (mutable Variables, nothing
returned; ``st.Optimizer`` if this checkout has it, else the optax state held in mutable
Variables by ``st.mutable``), the same with model and optimizer packed
(``st.mutable(..., packed=True)``, ``st.Optimizer(..., packed=True)``), and Flax NNX
with ref-backed Variables (``ref=True``).
Functional steps are lowered from ``jax.ShapeDtypeStruct``s; Ref-holding ones need real
buffers, so those are allocated (once per implementation).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import statetree as st
from benchmarks._harness import row

WORKLOAD = "W3 memory, Adam step"
MiB = 2**20
BATCH = 8
FIELDS = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased": "alias_size_in_bytes",
    "temp": "temp_size_in_bytes",
}
BASELINE = "functional jit, donated"


def loss(weights: list[Any], x: jax.Array) -> jax.Array:
    h = x
    for w in weights:
        h = jnp.tanh(h @ w)
    return jnp.mean(h**2)


def _tx() -> optax.GradientTransformation:
    return optax.adam(1e-3)


def _variables(tree: Any) -> list[st.Variable]:
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, st.Variable))


def _write(targets: Any, values: Any) -> None:
    """In place: each Variable of ``targets`` takes the matching leaf of ``values``."""
    for variable, value in zip(
        _variables(targets), jax.tree_util.tree_leaves(values), strict=True
    ):
        variable[...] = value


# --- the compiled step of each implementation ---------------------------------------------
# Each `compile_*` returns the compiled step and a note for the table.


def compile_functional(depth: int, width: int, donate: bool) -> tuple[Any, str]:
    tx = _tx()

    def step(weights: list[jax.Array], opt_state: Any, x: jax.Array) -> tuple[Any, Any]:
        grads = jax.grad(loss)(weights, x)
        updates, opt_state = tx.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state

    weights = [jax.ShapeDtypeStruct((width, width), jnp.float32)] * depth
    opt_state = jax.eval_shape(tx.init, weights)
    x = jax.ShapeDtypeStruct((BATCH, width), jnp.float32)
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    note = "returns new params + state" + (" in donated buffers" if donate else "")
    return jitted.lower(weights, opt_state, x).compile(), note


def compile_statetree(depth: int, width: int, packed: bool = False) -> tuple[Any, str]:
    tx = _tx()
    model = st.mutable(
        [st.Param(jnp.zeros((width, width), jnp.float32)) for _ in range(depth)], packed=packed
    )
    x = jnp.zeros((BATCH, width), jnp.float32)
    optimizer_cls = getattr(st, "Optimizer", None)
    if optimizer_cls is not None:
        optimizer = optimizer_cls(model, tx, wrt=st.Param, **({"packed": True} if packed else {}))

        def step(model: Any, optimizer: Any, x: jax.Array) -> None:
            grads = jax.grad(lambda m: loss(st.unbox(m), x))(st.freeze(model))
            optimizer.update(model, grads)

        try:
            compiled = jax.jit(step).lower(model, optimizer, x).compile()
            return compiled, "in place: st.Optimizer" + (", both packed" if packed else "")
        except Exception as e:  # its API may differ from the spec: measure the fallback
            fallback = f"st.Optimizer failed ({type(e).__name__}); "
    else:
        fallback = "no st.Optimizer here; "

    opt_state = st.mutable(tx.init(st.unbox(st.freeze(model))))

    def step_optax(model: Any, opt_state: Any, x: jax.Array) -> None:
        weights = st.unbox(st.freeze(model))
        grads = jax.grad(loss)(weights, x)
        updates, new_state = tx.update(grads, st.unbox(st.freeze(opt_state)), weights)
        _write(model, optax.apply_updates(weights, updates))
        _write(opt_state, new_state)

    compiled = jax.jit(step_optax).lower(model, opt_state, x).compile()
    return compiled, f"in place: {fallback}optax state in st.mutable Variables"


def compile_nnx(depth: int, width: int) -> tuple[Any, str]:
    from flax import nnx

    class Stack(nnx.Module):
        def __init__(self) -> None:
            self.weights = nnx.List(
                nnx.Param(jnp.zeros((width, width), jnp.float32), ref=True) for _ in range(depth)
            )

    model = Stack()
    optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
    x = jnp.zeros((BATCH, width), jnp.float32)

    def step(model: Stack, optimizer: nnx.Optimizer, x: jax.Array) -> None:
        # Gradients need plain arrays: differentiate a ref-free copy of the model.
        frozen = nnx.with_vars(model, ref=False)
        grads = jax.grad(lambda m: loss([w[...] for w in m.weights], x))(frozen)
        optimizer.update(model, grads)

    compiled = jax.jit(step).lower(model, optimizer, x).compile()
    return compiled, "in place: ref=True Params, nnx.Optimizer"


def _impls(depth: int, width: int) -> dict[str, Callable[[], tuple[Any, str]]]:
    return {
        BASELINE: lambda: compile_functional(depth, width, donate=True),
        "functional jit, no donation": lambda: compile_functional(depth, width, donate=False),
        "statetree (in place)": lambda: compile_statetree(depth, width),
        "statetree (in place, packed)": lambda: compile_statetree(depth, width, packed=True),
        "Flax NNX (ref=True)": lambda: compile_nnx(depth, width),
    }


def run(
    quick: bool,
    *,
    depth: int = 4,
    width: int | None = None,
    small: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Rows per memory figure for ``depth`` layers of ``width`` (default 4 of 2048, 256
    when ``quick``), whose weights are large enough to keep their own Refs when packed,
    and for ``small = (depth, width)`` (default 64 of 128, 16 of 64 when ``quick``),
    whose weights packing puts in one buffer."""
    if width is None:
        width = 256 if quick else 2048
    if small is None:
        small = (16, 64) if quick else (64, 128)
    return _case(depth, width) + _case(*small)


def _case(depth: int, width: int) -> list[dict[str, Any]]:
    size = f"{depth}x{width}x{width} f32"
    params_mib = depth * width * width * 4 / MiB
    rows = []
    for impl, compile_step in _impls(depth, width).items():
        baseline = impl == BASELINE
        try:
            compiled, note = compile_step()
            stats = compiled.memory_analysis()
            sizes = {name: getattr(stats, field) / MiB for name, field in FIELDS.items()}
        except Exception as e:  # a peer that cannot run is shown, not hidden
            why = f"could not run: {type(e).__name__}: {e}".splitlines()[0][:100]
            sizes, note = dict.fromkeys(FIELDS, float("nan")), why
        live = sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
        copies = live / (3 * params_mib)  # params + Adam's two moments = 3x params
        for name, value in sizes.items():
            rows.append(row(WORKLOAD, f"{size}: {name}", impl, value, "MiB", baseline=baseline))
        rows.append(
            row(
                WORKLOAD,
                f"{size}: live (args+outs-aliased)",
                impl,
                live,
                "MiB",
                baseline=baseline,
                note=f"{copies:.2f} copies of params+state",
            )
        )
        rows.append(
            row(
                WORKLOAD,
                f"{size}: peak (live+temp)",
                impl,
                live + sizes["temp"],
                "MiB",
                baseline=baseline,
                note=note,
            )
        )
    return rows
