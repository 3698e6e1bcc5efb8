"""adapters/_equinox/_state.py and _vmap.py: eqx.nn.State in mutable Variables, in_place."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _equinox import CNN, KEY, assert_trees_close, batched, variables
from statetree.adapters import equinox as eqxst

import statetree as st


# ----------------------------------------------------------------------------- state
@pytest.fixture(scope="module")
def cnn_and_state() -> tuple[CNN, eqx.nn.State]:
    return eqx.nn.make_with_state(CNN)(KEY)


def test_state_entries_become_batch_stats(cnn_and_state: tuple[CNN, eqx.nn.State]) -> None:
    _model, state = eqxst.mutable(cnn_and_state)
    assert isinstance(state, eqx.nn.State) and isinstance(state, eqxst.MutableState)
    assert {type(v) for v in variables(state)} == {st.BatchStat}
    assert all(v.mutable for v in variables(state))
    paths = st.state(state).paths()
    assert ("CNN.norm.ema_state_index", 0) in paths
    plain = eqxst.freeze(state)
    assert type(plain) is eqx.nn.State
    assert eqx.tree_equal(plain, cnn_and_state[1])


@pytest.fixture(scope="module")
def jitted_forward() -> object:
    @jax.jit
    def forward(model: CNN, state: eqx.nn.State, x: jax.Array) -> jax.Array:
        out, _ = eqxst.in_place(batched(model))(x, state)  # returned state ignored
        return out

    return forward


def test_in_place_commits_after_vmap(
    cnn_and_state: tuple[CNN, eqx.nn.State], jitted_forward: object
) -> None:
    eqx_model, eqx_state = cnn_and_state
    model, state = eqxst.mutable(cnn_and_state)
    x = jax.random.normal(jax.random.key(1), (5, 1, 6, 6))
    for _ in range(2):
        out = jitted_forward(model, state, x)
        want, eqx_state = batched(eqx_model)(x, eqx_state)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert_trees_close(eqxst.freeze(state), eqx_state, rtol=1e-5, atol=1e-6)
    # Eagerly too; the converted state itself is what comes back.
    out, returned = eqxst.in_place(batched(model))(x, state)
    assert returned is state


def test_write_inside_vmap_is_refused_with_the_fix(
    cnn_and_state: tuple[CNN, eqx.nn.State],
) -> None:
    model, state = eqxst.mutable(cnn_and_state)
    x = jnp.ones((2, 1, 6, 6))
    with pytest.raises(st.VariableWriteError, match=r"inside jax.vmap.*in_place"):
        batched(model)(x, state)


def test_spectral_norm_updates_in_place_when_called_directly() -> None:
    layer = eqx.nn.SpectralNorm(eqx.nn.Linear(3, 3, key=KEY), "weight", key=jax.random.key(2))
    eqx_model, eqx_state = eqx.nn.make_with_state(lambda: layer)()
    model, state = eqxst.mutable((eqx_model, eqx_state))
    x = jnp.ones(3)
    step = jax.jit(lambda m, s, x: m(x, s)[0])
    for _ in range(3):
        out = step(model, state, x)  # returned state dropped: it is `state` itself
        want, eqx_state = eqx_model(x, eqx_state)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert_trees_close(eqxst.freeze(state), eqx_state, rtol=1e-5, atol=1e-6)
    assert model(x, state)[1] is state


def test_state_set_checks_before_writing(cnn_and_state: tuple[CNN, eqx.nn.State]) -> None:
    model, state = eqxst.mutable(cnn_and_state)
    index = model.norm.ema_state_index
    before = eqxst.freeze(state)
    with pytest.raises(st.StructureError, match="structure"):
        state.set(index, jnp.zeros(4))
    with pytest.raises(st.VariableWriteError, match=r"shape \(5,\)"):
        state.set(index, (jnp.zeros(4), jnp.zeros(5)))
    assert eqx.tree_equal(eqxst.freeze(state), before)


def test_frozen_state_updates_functionally(cnn_and_state: tuple[CNN, eqx.nn.State]) -> None:
    model, state = eqxst.mutable(cnn_and_state)
    frozen = st.freeze(state)
    index = model.norm.ema_state_index
    new = frozen.set(index, (jnp.ones(4), jnp.ones(4)))
    assert new is not frozen and isinstance(new, eqxst.MutableState)
    np.testing.assert_array_equal(new.get(index)[0], np.ones(4))
    np.testing.assert_array_equal(frozen.get(index)[0], np.zeros(4))  # still valid


def test_substate_and_update(cnn_and_state: tuple[CNN, eqx.nn.State]) -> None:
    model, state = eqxst.mutable(cnn_and_state)
    sub = state.substate(model.norm.ema_first_time_index)
    assert isinstance(sub, eqxst.MutableState)
    sub.set(model.norm.ema_first_time_index, jnp.array(False))
    assert not bool(state.get(model.norm.ema_first_time_index)[...])  # same Variables
    plain = eqx.nn.State.tree_unflatten(("CNN.norm.ema_first_time_index",), (jnp.array(True),))
    assert state.update(plain) is state
    assert bool(state.get(model.norm.ema_first_time_index)[...])
    bad = eqx.nn.State.tree_unflatten(
        ("CNN.norm.ema_first_time_index", "CNN.norm.ema_state_index"),
        (jnp.array(False), (jnp.zeros(4), jnp.zeros(3))),
    )
    with pytest.raises(st.VariableWriteError, match=r"ema_state_index.*shape \(3,\)"):
        state.update(bad)
    assert bool(state.get(model.norm.ema_first_time_index)[...])  # nothing was written
    alien = eqx.nn.State.tree_unflatten(("elsewhere",), (jnp.array(True),))
    with pytest.raises(st.StructureError, match="not in this state"):
        state.update(alien)


# ----------------------------------------------------------------------------- eqx.nn.State(model)
class GanDiscriminator(eqx.Module):
    """The GAN notebook's way: the model keeps its StateIndex markers (``object()``s) and
    the state comes from ``eqx.nn.State(model)``, not ``make_with_state``."""

    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 3, 3, key=k1)
        self.norm = eqx.nn.BatchNorm(3, "batch", mode="batch")
        self.head = eqx.nn.Linear(3, 1, key=k2)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        x, state = self.norm(self.conv(x), state)
        return self.head(x.mean(axis=(1, 2))), state


def test_state_of_model_works_like_make_with_state() -> None:
    plain = GanDiscriminator(KEY)
    plain_state = eqx.nn.State(plain)
    model, state = eqxst.mutable((plain, eqx.nn.State(plain)))
    assert all(isinstance(p[0], int) for p in st.state(state).paths())  # positions
    x = jax.random.normal(jax.random.key(1), (4, 1, 5, 5))
    forward = jax.jit(lambda m, s, x: eqxst.in_place(batched(m))(x, s)[0])
    for _ in range(2):
        want, plain_state = batched(plain)(x, plain_state)
        np.testing.assert_allclose(forward(model, state, x), want, rtol=1e-5, atol=1e-6)
    assert_trees_close(eqxst.freeze(state), plain_state, rtol=1e-5, atol=1e-6)


def test_errors_about_object_markers_name_positions_not_addresses() -> None:
    plain = GanDiscriminator(KEY)
    model, state = eqxst.mutable((plain, eqx.nn.State(plain)))
    index = model.norm.batch_state_index
    with pytest.raises(st.VariableWriteError, match=r"MutableState.set\(\d+, value\)") as e:
        state.set(index, (jnp.zeros(3), jnp.zeros(5)))
    assert " at 0x" not in str(e.value)
    alien = eqx.nn.State(GanDiscriminator(KEY))
    with pytest.raises(st.StructureError, match="not in this state") as e:
        state.update(alien)
    assert " at 0x" not in str(e.value)
