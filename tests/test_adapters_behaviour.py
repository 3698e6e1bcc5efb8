"""One behavioural suite, run over every adapter.

Each case brings a small two-layer model in its framework's own form, the adapter's
``mutable``/``freeze``, and a forward function. The same promises are checked for all:
conversion, in-place writes under ``jax.jit``, round trips, split/merge identity, and an
in-place training step whose loss falls.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import statetree as st


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Any]  # the model in its framework's own form
    mutable: Callable[[Any], Any]
    freeze: Callable[[Any], Any]
    forward: Callable[[Any, jax.Array], jax.Array]


# ------------------------------------------------------------------ custom nodes
@st.register_node
class Dense:
    def __init__(self, key: jax.Array, din: int, dout: int) -> None:
        self.kernel = st.Param(jax.random.normal(key, (din, dout)) * 0.5)
        self.bias = st.Param(jnp.zeros(dout))
        self.activation = "tanh"  # static

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel + self.bias


@st.register_node
class TwoLayer:
    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.layers = [Dense(k1, 2, 8), Dense(k2, 8, 1)]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers[1](jnp.tanh(self.layers[0](x)))


def custom_case() -> Case:
    return Case(
        "custom-node",
        make=lambda: TwoLayer(jax.random.key(0)),
        mutable=st.mutable,
        freeze=st.freeze,
        forward=lambda m, x: m(x),
    )


# ------------------------------------------------------------------ equinox
def equinox_case() -> Case:
    eqx = pytest.importorskip("equinox")
    from statetree.adapters import equinox as st_eqx

    return Case(
        "equinox",
        make=lambda: eqx.nn.MLP(2, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(0)),
        mutable=st_eqx.mutable,
        freeze=st_eqx.freeze,
        forward=lambda m, x: jax.vmap(m)(x),
    )


# ------------------------------------------------------------------ plain dicts
def _dict_model() -> dict[str, Any]:
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "layers": [
            {"kernel": jax.random.normal(k1, (2, 8)) * 0.5, "bias": jnp.zeros(8)},
            {"kernel": jax.random.normal(k2, (8, 1)) * 0.5, "bias": jnp.zeros(1)},
        ]
    }


def _dict_forward(m: Any, x: jax.Array) -> jax.Array:
    first, last = m["layers"]
    return jnp.tanh(x @ first["kernel"] + first["bias"]) @ last["kernel"] + last["bias"]


def dicts_case() -> Case:
    from statetree.adapters import dicts

    return Case(
        "dicts",
        make=_dict_model,
        mutable=dicts.mutable,
        freeze=dicts.freeze,
        forward=_dict_forward,
    )


CASES = {"custom-node": custom_case, "equinox": equinox_case, "dicts": dicts_case}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


X = jnp.linspace(-1, 1, 16).reshape(8, 2)
Y = jnp.sin(2 * X[:, :1]) * X[:, 1:]


def variables(tree: Any) -> list[st.Variable]:
    flat = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, st.Variable))
    return [x for x in flat if isinstance(x, st.Variable)]


def arrays(tree: Any) -> list[np.ndarray]:
    return [
        np.asarray(x)
        for x in jax.tree_util.tree_leaves(st.unbox(tree))
        if isinstance(x, jax.Array)
    ]


def test_mutable_converts_every_array(case: Case) -> None:
    model = case.make()
    m = case.mutable(model)
    vs = variables(m)
    assert vs and all(v.mutable for v in vs)
    assert len(vs) == len(arrays(model))
    np.testing.assert_allclose(case.forward(m, X), case.forward(model, X), rtol=1e-6)


def test_freeze_gives_back_the_original_values(case: Case) -> None:
    model = case.make()
    frozen = case.freeze(case.mutable(model))
    assert not any(st.is_mutable(v) for v in variables(frozen))
    for a, b in zip(arrays(frozen), arrays(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert type(frozen) is type(model)


def test_jit_takes_the_model_directly_and_writes_land_in_place(case: Case) -> None:
    m = case.mutable(case.make())

    @jax.jit
    def scale(m: Any) -> jax.Array:
        for v in variables(m):
            v[...] = v[...] * 2
        return case.forward(m, X)

    before = arrays(m)
    out = scale(m)
    for a, b in zip(arrays(m), before, strict=True):
        np.testing.assert_allclose(a, 2 * b)
    np.testing.assert_allclose(out, case.forward(m, X), rtol=1e-5)


def test_split_merge_identity(case: Case) -> None:
    m = case.mutable(case.make())
    graphdef, state = st.split(m)
    rebuilt = st.merge(graphdef, state)
    assert all(a is b for a, b in zip(variables(rebuilt), variables(m), strict=True))
    assert st.find_aliases(m) == []


def test_in_place_training_step(case: Case) -> None:
    m = case.mutable(case.make())
    optimizer = st.Optimizer(m, optax.adam(1e-2), wrt=st.Param)

    @jax.jit
    def step(m: Any, optimizer: st.Optimizer) -> jax.Array:
        graphdef, params, rest = st.split(m, st.Param, ...)

        def loss_fn(params: st.State) -> jax.Array:
            return jnp.mean((case.forward(st.merge(graphdef, params, rest), X) - Y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
        optimizer.update(m, grads)
        return loss

    losses = [float(step(m, optimizer)) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]
