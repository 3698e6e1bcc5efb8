"""eqx.nn.Shared in a converted model: Equinox's placeholder kept, one Variable when called."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from _equinox import KEY, assert_trees_close, variables
from statetree.adapters import equinox as eqxst

import statetree as st

TX = optax.adam(1e-2)
STEPS = 4


def tied() -> eqx.nn.Shared:
    k1, k2 = jax.random.split(KEY)
    pair = (eqx.nn.Embedding(5, 4, key=k1), eqx.nn.Linear(4, 5, key=k2))
    return eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight)


class LanguageModel(eqx.Module):
    """Equinox's docstring example of eqx.nn.Shared: the embedding is the output layer."""

    shared: eqx.nn.Shared
    mix: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        embedding = eqx.nn.Embedding(7, 4, key=k1)
        linear = eqx.nn.Linear(4, 7, key=k2)
        self.shared = eqx.nn.Shared(
            (embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight
        )
        self.mix = eqx.nn.Linear(4, 4, key=k3)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        embedding, linear = self.shared()
        assert embedding.weight is linear.weight  # Equinox's docstring asserts it
        hidden = jax.nn.tanh(jax.vmap(self.mix)(jax.vmap(embedding)(tokens)))
        return jax.vmap(linear)(hidden)


def loss(model: LanguageModel, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    logits = model(tokens)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], 1))


def test_the_placeholder_stays_and_a_call_gives_one_variable_at_both_positions() -> None:
    original = tied()
    shared = eqxst.mutable(original)
    assert repr(shared.pytree[1].weight) == "SharedNode"  # as Equinox keeps it
    assert len(variables(shared)) == 2  # the tied weight once, plus the linear's bias
    assert st.find_aliases(shared) == []
    embedding, linear = shared()
    assert embedding.weight is linear.weight is shared.pytree[0].weight
    assert st.find_aliases((embedding, linear)) == [((0, "weight"), (1, "weight"))]
    shared.pytree[0].weight[0, 0] = 42.0
    assert float(shared()[1].weight[0, 0]) == 42.0
    back = eqxst.freeze(shared)
    assert type(back) is eqx.nn.Shared and not variables(back)
    assert jtu.tree_structure(back) == jtu.tree_structure(original)
    assert repr(back.pytree[1].weight) == "SharedNode"
    assert float(back()[1].weight[0, 0]) == 42.0


def test_a_tied_model_goes_into_plain_jit() -> None:
    shared = eqxst.mutable(tied())

    @jax.jit
    def double(model: eqx.nn.Shared) -> None:
        model()[1].weight[...] *= 2.0  # written through the linear's position

    before = np.asarray(shared.pytree[0].weight[...])
    double(shared)
    np.testing.assert_allclose(shared.pytree[0].weight[...], 2 * before)


def test_a_computing_get_is_recomputed_on_every_call_as_in_equinox() -> None:
    k1, k2 = jax.random.split(KEY)
    pair = (eqx.nn.Linear(4, 5, key=k1), eqx.nn.Linear(5, 4, key=k2))
    original = eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight.T)
    shared = eqxst.mutable(original)
    assert len(variables(shared)) == 3  # no copy of the transposed weight
    shared.pytree[0].weight[...] = 1.0
    np.testing.assert_array_equal(shared()[1].weight, np.ones((4, 5)))
    x = jnp.arange(5.0)
    np.testing.assert_allclose(jax.jit(lambda m, x: m()[1](x))(shared, x), 10.0 + shared()[1].bias)
    back = eqxst.freeze(shared)
    assert jtu.tree_structure(back) == jtu.tree_structure(original)


@pytest.fixture(scope="module")
def data() -> tuple[jax.Array, jax.Array]:
    tokens = jax.random.randint(jax.random.key(1), (6,), 0, 7)
    return tokens, jnp.roll(tokens, -1)


def test_tied_training_with_st_optimizer_under_plain_jit_matches_equinox(
    data: tuple[jax.Array, jax.Array],
) -> None:
    tokens, targets = data
    plain = LanguageModel(KEY)

    @eqx.filter_jit
    def eqx_step(model, opt_state):
        value, grads = eqx.filter_value_and_grad(loss)(model, tokens, targets)
        updates, opt_state = TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    opt_state = TX.init(eqx.filter(plain, eqx.is_array))
    want = []
    for _ in range(STEPS):
        plain, opt_state, value = eqx_step(plain, opt_state)
        want.append(float(value))

    model = eqxst.mutable(LanguageModel(KEY))
    optimizer = st.Optimizer(model, TX)

    @jax.jit  # the model goes in as it is: no st.split
    def step(model, optimizer, tokens, targets):
        value, grads = eqx.filter_value_and_grad(loss)(eqxst.freeze(model), tokens, targets)
        optimizer.update(model, grads)
        return value

    got = [float(step(model, optimizer, tokens, targets)) for _ in range(STEPS)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] < got[0]
    assert_trees_close(eqxst.freeze(model), plain, rtol=1e-5, atol=1e-6)
