"""W2: tiny MLP adam step (Equinox) -- statetree's in-place step against Equinox's own.

One training step of an ``eqx.nn.MLP`` 2 -> 64 -> 3 (adam, batch 10), three ways, in one
process:

- raw JAX: ``jax.jit`` of the functional step with the parameters and optimizer state
  donated (the dispatch floor for this model; the baseline);
- Equinox: the idiomatic ``eqx.filter_jit`` step returning a new model and opt state;
- statetree: the model converted with ``statetree.adapters.equinox.mutable``, a plain
  ``jax.jit`` step that updates parameters and optimizer state in place, returning only
  the loss (with ``st.Optimizer`` where this checkout has it, else an optax update
  written in the step).

The model is tiny so the figures are per-step dispatch cost, not arithmetic.

W2x: the scripts of ``examples/equinox/`` (Equinox's stateful BatchNorm model, MNIST CNN,
GRU RNN, and a KV-cache decoder), each timed three ways in one interleaved run: its
``eqx.filter_jit`` step (the baseline the ratios are to), the same step as a functional
``jax.jit`` with the model and optimizer state (or cache) donated, and its in-place
step as ``docs/adapters/equinox.md`` teaches it (``examples/equinox/*.statetree_step``).
For the decoder, "step" is one whole generation (a ``jax.lax.fori_loop`` over the
tokens) and, on a row of its own, one token.
"""

import importlib
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from statetree.adapters import equinox as eqxst

import statetree as st

from ._harness import row as _row
from ._harness import time_many_us

WORKLOAD = "W2 tiny MLP adam step (Equinox)"
EXAMPLES_WORKLOAD = "W2x examples/equinox step"
EXAMPLES = ("stateful", "mnist_cnn", "train_rnn", "kv_decoder")
_EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples" / "equinox"
CASE = "MLP 2->64->3, batch 10"


def _loss(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def _data() -> tuple[Any, jax.Array, jax.Array, Any]:
    mlp = eqx.nn.MLP(2, 3, width_size=64, depth=1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (10, 2))
    y = jax.random.normal(jax.random.key(2), (10, 3))
    return mlp, x, y, optax.adam(1e-3)


def _raw_jax() -> Callable[[], Any]:
    mlp, x, y, tx = _data()
    params, static = eqx.partition(mlp, eqx.is_array)

    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(lambda p: _loss(eqx.combine(p, static), x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, tx.init(params)]

    def call() -> jax.Array:
        carry[0], carry[1], loss = jitted(carry[0], carry[1], x, y)
        return loss

    return call


def _equinox() -> Callable[[], Any]:
    mlp, x, y, tx = _data()

    @eqx.filter_jit
    def step(model: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = eqx.filter_value_and_grad(_loss)(model, x, y)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    carry = [mlp, tx.init(eqx.filter(mlp, eqx.is_array))]

    def call() -> jax.Array:
        carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
        return loss

    return call


def _grads(model: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    graphdef, params, rest = st.split(model, st.Param, ...)
    loss, grads = jax.value_and_grad(lambda p: _loss(st.merge(graphdef, p, rest), x, y))(
        st.freeze(params)
    )
    return params, grads, loss


def _statetree_optimizer(packed: bool = False) -> Callable[[], Any]:
    """The in-place step with ``st.Optimizer``; ``packed`` packs the model and the
    optimizer state into a few buffers, so jit dispatches a few Refs."""
    mlp, x, y, tx = _data()
    model = st.mutable(eqxst.mutable(mlp), packed=packed)
    optimizer = st.Optimizer(model, tx, wrt=st.Param, packed=packed)

    @jax.jit
    def step(model: Any, optimizer: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        _, grads, loss = _grads(model, x, y)
        optimizer.update(model, grads)
        return loss

    return lambda: step(model, optimizer, x, y)


def _statetree_optax() -> Callable[[], Any]:
    mlp, x, y, tx = _data()
    model = eqxst.mutable(mlp)
    opt_state = st.mutable(tx.init(st.unbox(st.state(model, st.Param))))
    is_variable = lambda v: isinstance(v, st.Variable)

    @jax.jit
    def step(model: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        params, grads, loss = _grads(model, x, y)
        values = st.unbox(params)
        updates, new_opt_state = tx.update(st.unbox(grads), st.unbox(opt_state), values)
        st.update(model, optax.apply_updates(values, updates))
        jtu.tree_map(
            lambda v, new: v.__setitem__(Ellipsis, new),
            opt_state,
            new_opt_state,
            is_leaf=is_variable,
        )
        return loss

    return lambda: step(model, opt_state, x, y)


def _ref_floor() -> tuple[Callable[[], Any], int]:
    """A jitted no-op given as many raw ``jax.Ref``s as the in-place step takes: what
    JAX's dispatch of Ref arguments costs before any statetree code runs."""
    mlp, _, _, tx = _data()
    params = eqx.filter(mlp, eqx.is_array)
    refs = [jax.new_ref(a) for a in jtu.tree_leaves((params, tx.init(params)))]
    noop = jax.jit(lambda refs: jnp.zeros(()))
    return (lambda: noop(refs)), len(refs)


# ----------------------------------------------------------------------------- examples
def _example(name: str) -> Any:
    if str(_EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(_EXAMPLES_DIR))
    return importlib.import_module(name)


def _donated_training(module: Any, stateful: bool) -> Callable[[], Any]:
    """The example's training step as functional ``jax.jit`` with donation: the limit."""
    tx, (x, y) = module.TX, module.data()
    if stateful:
        model, state = eqx.nn.make_with_state(module.Model)(jax.random.key(0))
    else:
        model, state = (
            module.build() if hasattr(module, "build") else module.CNN(jax.random.key(0)),
            None,
        )
    params, static = eqx.partition(model, eqx.is_array)

    def step(params: Any, state: Any, opt_state: Any) -> Any:
        def loss(params: Any, state: Any) -> Any:
            model = eqx.combine(params, static)
            if stateful:
                pred, state = module.batched(model)(x, state)
                return jnp.mean((pred - y) ** 2), state
            return module.loss(model, x, y), state

        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, state)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, value

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    carry = [params, state, tx.init(params)]

    def call() -> Any:
        carry[0], carry[1], carry[2], value = jitted(*carry)
        return value

    return call


def _donated_decoding(kv: Any, whole: bool) -> Callable[[], Any]:
    model, state = kv.build()
    params, static = eqx.partition(model, eqx.is_array)

    def generate(params: Any, state: Any, first: Any) -> Any:
        return kv.threaded_generate(eqx.combine(params, static), state, first)

    def one(params: Any, state: Any, token: Any, pos: Any) -> Any:
        return eqx.combine(params, static)(token, pos, state)

    carry = [state]
    if whole:
        jitted = jax.jit(generate, donate_argnums=(1,))

        def call() -> Any:
            tokens, carry[0] = jitted(params, carry[0], jnp.int32(3))
            return tokens

        return call
    jitted_one = jax.jit(one, donate_argnums=(1,))
    pos = [0]

    def call_one() -> Any:
        token, at = jnp.int32(pos[0] % kv.VOCAB), jnp.int32(pos[0] % kv.MAX_LEN)
        logits, carry[0] = jitted_one(params, carry[0], token, at)
        pos[0] += 1
        return logits

    return call_one


def _decoding(kv: Any, statetree: bool) -> Callable[[], Any]:
    """One whole generation (fori_loop over the tokens)."""
    if statetree:
        model, state = kv.statetree_model(packed=True)
        return lambda: kv.generate(model, state, jnp.int32(3))
    model, state = kv.build()
    carry = [state]

    def call() -> Any:
        tokens, carry[0] = kv.equinox_generate(model, carry[0], jnp.int32(3))
        return tokens

    return call


def example_rows(quick: bool, examples: Sequence[str] = EXAMPLES) -> list[dict]:
    """Per example: eqx.filter_jit (baseline), donated jax.jit, statetree in place."""
    rows = []
    for name in examples:
        module = _example(name)
        cases: dict[str, dict[str, Callable[[], Any]]] = {}
        if name == "kv_decoder":
            cases[f"{name}: generate {module.MAX_LEN} tokens (fori_loop)"] = {
                "eqx": _decoding(module, statetree=False),
                "jax": _donated_decoding(module, whole=True),
                "st": _decoding(module, statetree=True),
            }
            cases[f"{name}: one token"] = {
                "eqx": module.equinox_step()[0],
                "jax": _donated_decoding(module, whole=False),
                "st": module.statetree_step(packed=True)[0],
            }
        else:
            cases[f"{name}: training step"] = {
                "eqx": module.equinox_step()[0],
                "jax": _donated_training(module, stateful=name == "stateful"),
                "st": module.statetree_step()[0],
            }
        for case, fns in cases.items():
            us = time_many_us(fns, quick=quick)
            rows.append(
                _row(
                    EXAMPLES_WORKLOAD,
                    case,
                    "Equinox (eqx.filter_jit)",
                    us["eqx"],
                    "us",
                    baseline=True,
                )
            )
            rows.append(
                _row(EXAMPLES_WORKLOAD, case, "raw JAX (jax.jit, donated)", us["jax"], "us")
            )
            rows.append(
                _row(
                    EXAMPLES_WORKLOAD,
                    case,
                    "statetree (jax.jit in place, as the docs teach)",
                    us["st"],
                    "us",
                )
            )
    return rows


def run(quick: bool, examples: Sequence[str] | None = None) -> list[dict]:
    """The MLP rows, then the examples' (none in a quick run unless ``examples`` names
    them: each compiles three training steps; tests/test_equinox_examples.py checks
    their results instead)."""
    chosen = examples if examples is not None else (() if quick else EXAMPLES)
    return _mlp_rows(quick) + example_rows(quick, chosen)


def _mlp_rows(quick: bool) -> list[dict]:
    def row(impl: str, value: float, baseline: bool = False) -> dict:
        return {
            "workload": WORKLOAD,
            "case": CASE,
            "impl": impl,
            "value": value,
            "unit": "us",
            "baseline": baseline,
        }

    floor, n = _ref_floor()
    fns = {
        "raw JAX (functional jit, donation)": _raw_jax(),
        "Equinox (eqx.filter_jit, functional)": _equinox(),
        "statetree (jax.jit in place, optax in step)": _statetree_optax(),
        f"floor: jax.jit no-op taking {n} raw jax.Refs": floor,
        "statetree (jax.jit in place, st.Optimizer)": _statetree_optimizer(),
        "statetree (in place, packed model + optimizer)": _statetree_optimizer(packed=True),
    }
    us = time_many_us(fns, quick=quick)  # interleaved, like every other row
    baseline = next(iter(fns))
    return [row(impl, value, baseline=impl == baseline) for impl, value in us.items()]


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r['case'][:44]:44s} {r['impl'][:48]:48s} {r['value']:9.1f} {r['unit']}")
