"""Training converted Equinox models matches pure Equinox step for step."""

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from _equinox import CNN, KEY, assert_trees_close, batched, is_variable, mse
from statetree.adapters import equinox as eqxst

import statetree as st


# ----------------------------------------------------------------------------- training
def assign(targets: object, values: object) -> None:
    """Per-Variable writes of a same-structured tree of arrays."""
    jtu.tree_map(lambda v, x: v.__setitem__(Ellipsis, x), targets, values, is_leaf=is_variable)


TX = optax.adam(1e-2)
STEPS = 6


def optax_in_place(model: object, opt_state: object, params: st.State, grads: st.State) -> None:
    """One ``TX`` step written in place without ``st.Optimizer``: the model's params
    through ``st.update``, the optax state through per-Variable writes."""
    values = st.unbox(params)
    updates, new_opt = TX.update(st.unbox(grads), st.unbox(opt_state), values)
    st.update(model, optax.apply_updates(values, updates))
    assign(opt_state, new_opt)


def eqx_mlp_training(mlp: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> tuple[list, object]:
    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(lambda m: mse(jax.vmap(m)(x), y))(model)
        updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    opt_state = TX.init(eqx.filter(mlp, eqx.is_array))
    losses = []
    for _ in range(STEPS):
        mlp, opt_state, loss = step(mlp, opt_state)
        losses.append(float(loss))
    return losses, mlp


@pytest.fixture(scope="module")
def mlp_data() -> tuple[eqx.nn.MLP, jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(3), (10, 2))
    y = jax.random.normal(jax.random.key(4), (10, 3))
    return eqx.nn.MLP(2, 3, 16, 2, key=KEY), x, y


def test_mlp_training_matches_equinox(mlp_data: tuple) -> None:
    mlp, x, y = mlp_data
    want_losses, want_model = eqx_mlp_training(mlp, x, y)
    model = eqxst.mutable(mlp)
    opt_state = st.mutable(TX.init(st.unbox(st.state(model, st.Param))))

    @jax.jit
    def step(model, opt_state, x, y):
        graphdef, params, rest = st.split(model, st.Param, ...)
        loss_fn = lambda p: mse(jax.vmap(st.merge(graphdef, p, rest))(x), y)
        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
        optax_in_place(model, opt_state, params, grads)
        return loss

    losses = [float(step(model, opt_state, x, y)) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    assert_trees_close(eqxst.freeze(model), want_model, rtol=1e-5, atol=1e-6)


def test_mlp_training_with_st_optimizer_matches_equinox(mlp_data: tuple) -> None:
    mlp, x, y = mlp_data
    want_losses, want_model = eqx_mlp_training(mlp, x, y)
    model = eqxst.mutable(mlp)
    optimizer = st.Optimizer(model, TX, wrt=st.Param)

    @jax.jit
    def step(model, optimizer, x, y):
        graphdef, params, rest = st.split(model, st.Param, ...)
        loss_fn = lambda p: mse(jax.vmap(st.merge(graphdef, p, rest))(x), y)
        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert_trees_close(eqxst.freeze(model), want_model, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def cnn_reference(cnn_and_state: tuple[CNN, eqx.nn.State]) -> tuple:
    """Pure Equinox training, state threaded; the data and what it produced."""
    x = jax.random.normal(jax.random.key(5), (8, 1, 6, 6))
    y = jax.random.normal(jax.random.key(6), (8, 3))

    @eqx.filter_jit
    def step(model, state, opt_state):
        def loss_fn(model, state):
            out, state = batched(model)(x, state)
            return mse(out, y), state

        (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state)
        updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, opt_state, loss

    model, state = cnn_and_state
    opt_state = TX.init(eqx.filter(model, eqx.is_array))
    losses = []
    for _ in range(STEPS):
        model, state, opt_state, loss = step(model, state, opt_state)
        losses.append(float(loss))
    return x, y, losses, model, state


def cnn_loss(graphdef, rest, state, x, y):
    def loss_fn(params):
        model = st.merge(graphdef, params, rest)
        out, _ = eqxst.in_place(batched(model))(x, state)  # statistics land in `state`
        return mse(out, y)

    return loss_fn


def check_cnn(losses: list, model: CNN, state: eqx.nn.State, reference: tuple) -> None:
    _, _, want_losses, want_model, want_state = reference
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    assert_trees_close(eqxst.freeze(model), want_model, rtol=1e-5, atol=1e-6)
    assert_trees_close(eqxst.freeze(state), want_state, rtol=1e-5, atol=1e-6)


def test_batchnorm_cnn_training_matches_equinox(
    cnn_and_state: tuple[CNN, eqx.nn.State], cnn_reference: tuple
) -> None:
    x, y = cnn_reference[:2]
    model, state = eqxst.mutable(cnn_and_state)
    opt_state = st.mutable(TX.init(st.unbox(st.state(model, st.Param))))

    @jax.jit
    def step(model, state, opt_state, x, y):
        graphdef, params, rest = st.split(model, st.Param, ...)
        loss_fn = cnn_loss(graphdef, rest, state, x, y)
        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
        optax_in_place(model, opt_state, params, grads)
        return loss

    losses = [float(step(model, state, opt_state, x, y)) for _ in range(STEPS)]
    check_cnn(losses, model, state, cnn_reference)


def test_batchnorm_cnn_training_with_st_optimizer_matches_equinox(
    cnn_and_state: tuple[CNN, eqx.nn.State], cnn_reference: tuple
) -> None:
    x, y = cnn_reference[:2]
    model, state = eqxst.mutable(cnn_and_state)
    optimizer = st.Optimizer(model, TX, wrt=st.Param)

    @jax.jit
    def step(model, state, optimizer, x, y):
        graphdef, params, rest = st.split(model, st.Param, ...)
        loss_fn = cnn_loss(graphdef, rest, state, x, y)
        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(params))
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, state, optimizer, x, y)) for _ in range(STEPS)]
    check_cnn(losses, model, state, cnn_reference)


@pytest.fixture(scope="module")
def cnn_and_state() -> tuple[CNN, eqx.nn.State]:
    return eqx.nn.make_with_state(CNN)(KEY)
