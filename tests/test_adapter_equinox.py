"""statetree.adapters.equinox: Equinox models under mutable-array semantics."""

import doctest
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from statetree.adapters import equinox as eqxst

import statetree as st

KEY = jax.random.key(0)


def is_variable(x: object) -> bool:
    return isinstance(x, st.Variable)


def variables(tree: object) -> list[st.Variable]:
    return [x for x in jtu.tree_leaves(tree, is_leaf=is_variable) if is_variable(x)]


def assert_trees_close(a: object, b: object, **tol: float) -> None:
    la, ta = jtu.tree_flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jtu.tree_flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


class CNN(eqx.Module):
    """A tiny Conv -> BatchNorm -> relu -> pool -> Linear model (Equinox's way)."""

    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    head: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=k1)
        self.norm = eqx.nn.BatchNorm(4, "batch", momentum=0.9, mode="ema")
        self.head = eqx.nn.Linear(4, 3, key=k2)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        x, state = self.norm(self.conv(x), state)
        return self.head(jax.nn.relu(x).mean(axis=(1, 2))), state


def batched(model: object) -> object:
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


# ----------------------------------------------------------------------------- conversion
def test_mutable_kinds_static_fields_and_the_original_class() -> None:
    mlp = eqx.nn.MLP(2, 3, 8, 1, key=KEY)
    model = eqxst.mutable(mlp)
    assert isinstance(model, eqx.nn.MLP) and isinstance(model.layers[0], eqx.nn.Linear)
    assert model.activation is mlp.activation  # attributes read as on the original
    assert model.layers[0].in_features == 2
    assert type(model.layers[0].weight) is st.Param and model.layers[0].weight.mutable
    assert type(mlp.layers[0].weight) is not st.Param  # the input is not modified
    x = jnp.ones(2)
    np.testing.assert_allclose(model(x), mlp(x))
    # Integer arrays are not trainable: a plain Variable.
    emb = eqxst.mutable({"table": eqx.nn.Embedding(4, 2, key=KEY), "step": jnp.array(0)})
    assert type(emb["step"]) is st.Variable and type(emb["table"].weight) is st.Param


def test_converted_model_goes_into_jit_vmap_and_scan_directly() -> None:
    mlp = eqx.nn.MLP(2, 3, 8, 1, key=KEY)
    model = eqxst.mutable(mlp)
    xs = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(model, xs[0]), mlp(xs[0]))
    np.testing.assert_allclose(jax.vmap(model)(xs), jax.vmap(mlp)(xs), rtol=1e-6)

    @jax.jit
    def bump_in_scan(m: eqx.nn.MLP, x: jax.Array) -> jax.Array:
        def body(carry: jax.Array, _: None) -> tuple[jax.Array, None]:
            m.layers[0].bias[...] += 1.0  # in place, inside scan inside jit
            return carry + m(carry).sum(), None

        return jax.lax.scan(body, x, None, length=3)[0]

    before = np.asarray(model.layers[0].bias[...])
    bump_in_scan(model, xs[0])
    np.testing.assert_allclose(model.layers[0].bias[...], before + 3.0)


def test_scan_over_stacked_layers() -> None:
    keys = jax.random.split(KEY, 3)
    stack = eqx.filter_vmap(lambda k: eqx.nn.Linear(4, 4, key=k))(keys)
    layers = eqxst.mutable(stack)

    def body(x: jax.Array, layer: eqx.nn.Linear) -> tuple[jax.Array, None]:
        return layer(x), None

    got = jax.jit(lambda ls, x: jax.lax.scan(body, x, ls)[0])(layers, jnp.ones(4))
    np.testing.assert_allclose(got, jax.lax.scan(body, jnp.ones(4), stack)[0], rtol=1e-6)


def test_freeze_gives_plain_equinox_back() -> None:
    mlp = eqx.nn.MLP(2, 3, 8, 1, key=KEY)
    model = eqxst.mutable(mlp)
    back = eqxst.freeze(model)
    assert type(back) is eqx.nn.MLP and type(back.layers[0]) is eqx.nn.Linear
    assert not variables(back)
    assert eqx.tree_equal(back, mlp)
    model.layers[1].bias[...] = 5.0
    assert np.all(np.asarray(eqxst.freeze(model).layers[1].bias) == 5.0)


def test_mixed_dict_field_is_refused_with_its_path() -> None:
    # Lists and tuples mixing data with functions convert (tests/test_equinox_idioms.py);
    # other containers cannot keep their non-array items static: refused, with the path.
    class Mixed(eqx.Module):
        parts: dict

    bad = Mixed({"w": jnp.ones(2), "act": jax.nn.relu})
    before = jtu.tree_leaves(bad)
    with pytest.raises(st.StructureError, match=r"parts.*mixes arrays.*eqx.nn.Lambda"):
        eqxst.mutable({"model": bad})
    assert jtu.tree_leaves(bad) == before


def test_filter_jit_treats_refs_as_static_leaves() -> None:
    # The reason the docs say: call jax.jit, not eqx.filter_jit, on converted models.
    traces = []

    @eqx.filter_jit
    def bump(m: eqx.nn.Linear) -> None:
        traces.append(None)
        m.bias[...] += 1.0

    for _ in range(2):
        model = eqxst.mutable(eqx.nn.Linear(2, 2, key=KEY))
        bump(model)
        bump(model)
    assert len(traces) == 2  # one trace (and compilation) per set of Refs


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


# ----------------------------------------------------------------------------- tied weights
def tied() -> eqx.nn.Shared:
    k1, k2 = jax.random.split(KEY)
    pair = (eqx.nn.Embedding(5, 4, key=k1), eqx.nn.Linear(4, 5, key=k2))
    return eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight)


def test_shared_weights_are_one_storage() -> None:
    original = tied()
    shared = eqxst.mutable(original)
    assert st.find_aliases(shared) == [(("pytree", 0, "weight"), ("pytree", 1, "weight"))]
    shared.pytree[0].weight[0, 0] = 42.0
    assert float(shared.pytree[1].weight[0, 0]) == 42.0
    _embedding, linear = shared()
    assert float(linear.weight[0, 0]) == 42.0
    graphdef, params = st.split(shared, st.Param)
    assert len(params.paths()) == 2  # the tied weight once, plus the linear's bias

    @jax.jit
    def double_tied(graphdef: st.GraphDef, params: st.State) -> None:
        model = st.merge(graphdef, params)
        model.pytree[1].weight[...] *= 2.0

    double_tied(graphdef, params)
    assert float(shared.pytree[0].weight[0, 0]) == 84.0
    back = eqxst.freeze(shared)
    assert type(back) is eqx.nn.Shared
    assert jtu.tree_structure(back) == jtu.tree_structure(original)
    assert float(back()[0].weight[0, 0]) == 84.0


def test_shared_with_a_computing_get_keeps_equinox_semantics() -> None:
    k1, k2 = jax.random.split(KEY)
    pair = (eqx.nn.Linear(4, 5, key=k1), eqx.nn.Linear(5, 4, key=k2))
    original = eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight.T)
    shared = eqxst.mutable(original)
    assert st.find_aliases(shared) == []
    assert type(shared.pytree[1].weight) is st.Cache  # a placeholder, never trained
    shared.pytree[0].weight[...] = 1.0
    np.testing.assert_array_equal(shared()[1].weight, np.ones((4, 5)))
    back = eqxst.freeze(shared)
    assert jtu.tree_structure(back) == jtu.tree_structure(original)


# ----------------------------------------------------------------------------- training
def mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((pred - y) ** 2)


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


def test_docstring_examples() -> None:
    # tests/test_docs.py walks the statetree folder; adapters/ lives beside it.
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(eqxst, optionflags=flags)
    assert result.attempted >= 4 and result.failed == 0


# ----------------------------------------------------------------------------- optional
def test_core_works_without_equinox() -> None:
    script = textwrap.dedent(
        """
        import sys

        class BlockEquinox:
            def find_spec(self, name, path=None, target=None):
                if name == "equinox" or name.startswith("equinox."):
                    raise ImportError("equinox is blocked for this test")

        sys.meta_path.insert(0, BlockEquinox())
        import jax.numpy as jnp
        import statetree as st

        tree = st.mutable({"w": jnp.ones(3), "act": "relu"})
        graphdef, state = st.split(tree)
        again = st.merge(graphdef, state)
        again["w"][...] = 2.0
        assert float(tree["w"][0]) == 2.0 and again["act"] == "relu"
        assert "equinox" not in sys.modules
        try:
            import statetree.adapters.equinox
        except ImportError as e:
            assert "pip install 'statetree[equinox]'" in str(e), e
        else:
            raise AssertionError("the adapter imported without equinox")
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
