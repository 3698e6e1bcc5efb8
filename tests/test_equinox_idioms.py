"""Equinox's own tools and idioms on converted models (issue 13): each works, or fails
loudly with the fix; never silently. Real Equinox throughout, no mocks."""

import pathlib

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


def loss(model: eqx.Module, x: jax.Array) -> jax.Array:
    return jnp.sum(jax.vmap(model)(x) ** 2)


def values(tree: object) -> list[np.ndarray]:
    return [np.asarray(x) for x in jtu.tree_leaves(eqx.filter(eqxst.freeze(tree), eqx.is_array))]


# ----------------------------------------------------------------------------- 1: grads
def test_filter_grad_on_a_mutable_model_is_refused_by_the_optimizer_naming_paths() -> None:
    model = eqxst.mutable(eqx.nn.MLP(2, 3, 4, 1, key=KEY))
    optimizer = st.Optimizer(model, optax.sgd(0.1))
    x = jnp.ones((3, 2))
    before = values(model)
    # Equinox sees no arrays in a mutable model (a Variable's leaf is a jax.Ref) ...
    grads = eqx.filter_grad(loss)(model, x)
    assert jtu.tree_leaves(grads) == []
    assert jtu.tree_leaves(eqx.partition(model, eqx.is_array)[0]) == []
    # ... and statetree says so where it sees the empty gradient, naming every path.
    pattern = r"no gradient for:\n  \['layers'\]\[0\]\['weight'\](.|\n)*eqxst|freeze\(model\)"
    with pytest.raises(st.StructureError, match=pattern):
        optimizer.update(model, grads)
    with pytest.raises(st.StructureError, match=r"grads hold no arrays"):
        optimizer.update(model, eqx.partition(model, eqx.is_array)[0])
    assert all(np.array_equal(a, b) for a, b in zip(values(model), before, strict=True))


def test_freeze_then_filter_grad_trains_like_equinox() -> None:
    mlp = eqx.nn.MLP(2, 3, 4, 1, key=KEY)
    x = jax.random.normal(jax.random.key(1), (5, 2))
    tx = optax.adam(1e-2)
    model = eqxst.mutable(mlp)
    optimizer = st.Optimizer(model, tx)

    @jax.jit
    def step(model: eqx.Module, optimizer: st.Optimizer) -> jax.Array:
        value, grads = eqx.filter_value_and_grad(loss)(eqxst.freeze(model), x)
        optimizer.update(model, grads)  # grads of the plain model: the same paths
        return value

    @eqx.filter_jit
    def eqx_step(model: eqx.Module, opt_state: optax.OptState) -> tuple:
        value, grads = eqx.filter_value_and_grad(loss)(model, x)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    opt_state = tx.init(eqx.filter(mlp, eqx.is_array))
    for _ in range(3):
        got = step(model, optimizer)
        mlp, opt_state, want = eqx_step(mlp, opt_state)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(values(model), values(mlp), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_every_statetree_door_refuses_the_empty_gradients_of_filter_grad(
    tmp_path: pathlib.Path,
) -> None:
    model = eqxst.mutable(eqx.nn.MLP(2, 3, 4, 1, key=KEY))
    x = jnp.ones((3, 2))
    _value, grads = eqx.filter_value_and_grad(loss)(model, x)
    fix = r"hold no value(.|\n)*eqx.filter_grad(.|\n)*freeze\(model\)"
    with pytest.raises(st.StructureError, match=r"freeze\(obj\).*" + fix):
        eqxst.freeze(grads)
    with pytest.raises(st.StructureError, match=r"mutable\(obj\).*" + fix):
        eqxst.mutable(grads)
    with pytest.raises(st.StructureError, match=r"tree_serialise_leaves.*" + fix):
        eqxst.tree_serialise_leaves(tmp_path / "grads.eqx", grads)
    assert not (tmp_path / "grads.eqx").exists()
    # Calling a half that holds no values (a gradient, a partition's other half).
    with pytest.raises(st.StructureError, match=r"calling Linear: .*\.weight.*" + fix):
        grads.layers[0](jnp.ones(2))


def test_no_false_alarm_for_input_gradients_and_frozen_feature_extractors() -> None:
    mlp = eqx.nn.MLP(2, 3, 4, 1, key=KEY)
    head = eqx.nn.Linear(3, 1, key=jax.random.key(1))
    backbone = eqxst.mutable(mlp)  # stays mutable: not trained
    x = jax.random.normal(jax.random.key(2), (5, 2))
    # Gradients with respect to the input, through a mutable model.
    got = jax.jit(jax.grad(lambda x, m: jnp.sum(jax.vmap(m)(x))))(x, backbone)
    np.testing.assert_allclose(got, jax.grad(lambda x: jnp.sum(jax.vmap(mlp)(x)))(x), rtol=1e-6)
    # A frozen feature extractor: only the (plain) head is differentiated.
    features = lambda h, m: jnp.sum(jax.vmap(h)(jax.vmap(m)(x)))
    got = jax.jit(lambda h, m: eqx.filter_grad(features)(h, m))(head, backbone)
    want = eqx.filter_grad(features)(head, mlp)
    np.testing.assert_allclose(got.weight, want.weight, rtol=1e-6)
    assert eqxst.freeze(got).weight.shape == (1, 3)  # plain gradients freeze as they are


# ----------------------------------------------------------------------------- 2: files
def test_serialise_leaves_round_trips_and_matches_pure_equinox_files(
    tmp_path: pathlib.Path,
) -> None:
    mlp = eqx.nn.MLP(2, 3, 4, 1, key=KEY)
    model = eqxst.mutable(mlp)
    # Equinox's own function sees only jax.Refs: it writes nothing (documented).
    eqx.tree_serialise_leaves(tmp_path / "eqx.eqx", model)
    assert (tmp_path / "eqx.eqx").stat().st_size == 0
    eqxst.tree_serialise_leaves(tmp_path / "st.eqx", model)
    eqx.tree_serialise_leaves(tmp_path / "plain.eqx", mlp)
    assert (tmp_path / "st.eqx").read_bytes() == (tmp_path / "plain.eqx").read_bytes()
    other = eqxst.mutable(eqx.nn.MLP(2, 3, 4, 1, key=jax.random.key(9)))
    weight = other.layers[0].weight
    assert eqxst.tree_deserialise_leaves(tmp_path / "st.eqx", other) is other
    assert other.layers[0].weight is weight  # loaded in place
    for a, b in zip(values(other), values(mlp), strict=True):
        np.testing.assert_array_equal(a, b)
    # A pure Equinox model loads the same file.
    plain = eqx.tree_deserialise_leaves(tmp_path / "st.eqx", eqx.nn.MLP(2, 3, 4, 1, key=KEY))
    assert eqx.tree_equal(plain, mlp)


def test_deserialise_into_another_shape_changes_nothing(tmp_path: pathlib.Path) -> None:
    eqxst.tree_serialise_leaves(tmp_path / "a.eqx", eqxst.mutable(eqx.nn.Linear(2, 3, key=KEY)))
    other = eqxst.mutable(eqx.nn.Linear(2, 4, key=KEY))
    before = values(other)
    # Equinox reads the file into a plain copy first; it refuses, and nothing is written.
    with pytest.raises(RuntimeError, match=r"weight.*changed shape"):
        eqxst.tree_deserialise_leaves(tmp_path / "a.eqx", other)
    assert all(np.array_equal(a, b) for a, b in zip(values(other), before, strict=True))


def test_serialise_a_tied_model_keeps_it_tied(tmp_path: pathlib.Path) -> None:
    k1, k2 = jax.random.split(KEY)
    pair = (eqx.nn.Embedding(5, 4, key=k1), eqx.nn.Linear(4, 5, key=k2))
    tied = eqxst.mutable(eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight))
    tied.pytree[0].weight[...] = 3.0
    eqxst.tree_serialise_leaves(tmp_path / "t.eqx", tied)
    tied.pytree[0].weight[...] = 0.0
    eqxst.tree_deserialise_leaves(tmp_path / "t.eqx", tied)
    embedding, linear = tied()
    assert float(linear.weight[0, 0]) == 3.0
    assert embedding.weight is linear.weight


# ----------------------------------------------------------------------------- 4: set
def test_state_set_checks_every_leaf_before_writing_any() -> None:
    bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch")
    model, state = eqxst.mutable((bn, state))
    index = model.ema_state_index
    before = [np.asarray(v) for v in state.get(index)]
    # The first leaf fits; the second has the wrong dtype: nothing may be written.
    with pytest.raises(st.StructureError, match=r"ema_state_index.*1.*int32"):
        state.set(index, (jnp.ones(3), jnp.ones(3, jnp.int32)))
    for a, b in zip(state.get(index), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # A frozen state updates functionally (as Equinox does), with the same dtype rule.
    frozen = st.freeze(state)
    with pytest.raises(st.VariableWriteError, match=r"dtype int32 cannot replace.*astype"):
        frozen.set(index, (jnp.ones(3), jnp.ones(3, jnp.int32)))
    # Equinox's own State refuses the same value.
    with pytest.raises(ValueError):
        eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch")[1].set(
            bn.ema_state_index, (jnp.ones(3), jnp.ones(3, jnp.int32))
        )


# ----------------------------------------------------------------------------- 5: direct
class KVCache(eqx.Module):
    """Written Equinox's way: get arrays, update them functionally, set them back."""

    keys: eqx.nn.StateIndex
    values: eqx.nn.StateIndex

    def __init__(self, length: int, dim: int) -> None:
        self.keys = eqx.nn.StateIndex(jnp.zeros((length, dim)))
        self.values = eqx.nn.StateIndex(jnp.zeros((length, dim)))

    def __call__(self, k: jax.Array, v: jax.Array, pos: jax.Array, state: eqx.nn.State) -> tuple:
        keys = state.get(self.keys).at[pos].set(k)
        values = jax.lax.dynamic_update_slice(state.get(self.values), v[None], (pos, 0))
        state = state.set(self.keys, keys)
        state = state.set(self.values, values)
        return keys.sum() + values.sum(), state


def test_stateful_layer_written_equinox_way_runs_directly_and_in_place() -> None:
    cache, eqx_state = eqx.nn.make_with_state(KVCache)(4, 2)
    model, state = eqxst.mutable((cache, eqx_state))
    assert isinstance(state.get(model.keys), jax.Array)  # arrays, as Equinox gives

    @jax.jit
    def decode(model: KVCache, state: eqx.nn.State) -> jax.Array:
        def body(pos: jax.Array, total: jax.Array) -> jax.Array:
            x = jnp.full(2, pos, jnp.float32)
            return total + model(x, -x, pos, state)[0]  # returned state ignored

        return jax.lax.fori_loop(0, 4, body, jnp.zeros(()))

    total = decode(model, state)
    want = 0.0
    for pos in range(4):
        x = jnp.full(2, pos, jnp.float32)
        out, eqx_state = cache(x, -x, pos, eqx_state)
        want += out
    np.testing.assert_allclose(total, want)
    np.testing.assert_array_equal(state.get(model.keys), eqx_state.get(cache.keys))
    np.testing.assert_array_equal(state.get(model.values), eqx_state.get(cache.values))
    out, returned = model(jnp.ones(2), jnp.ones(2), 0, state)  # eagerly too
    assert returned is state and float(state.get(model.keys)[0, 0]) == 1.0


# ----------------------------------------------------------------------------- 6: lists
class MnistCNN(eqx.Module):
    layers: list

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.layers = [
            eqx.nn.Conv2d(1, 2, kernel_size=3, key=k1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(2 * 5 * 5, 3, key=k2),
            jax.nn.log_softmax,
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x)
        return x


def test_list_mixing_modules_and_functions_converts_unchanged() -> None:
    cnn = MnistCNN(KEY)
    model = eqxst.mutable(cnn)
    assert type(model.layers) is not list and isinstance(model.layers, list)
    assert model.layers[2] is jax.nn.relu and model.layers[3] is jnp.ravel
    assert model.layers[0].weight.mutable
    assert st.state(model).paths()[0] == ("layers", 0, "weight")
    x = jax.random.normal(jax.random.key(1), (4, 1, 8, 8))
    got = jax.jit(lambda m, x: jax.vmap(m)(x))(model, x)
    np.testing.assert_allclose(got, jax.vmap(cnn)(x), rtol=1e-6)
    back = eqxst.freeze(model)
    assert type(back.layers) is list and eqx.tree_equal(back, cnn)
    graphdef, state = st.split(model)
    assert st.merge(graphdef, state).layers[2] is jax.nn.relu


# ----------------------------------------------------------------------------- 7: flags
class Block(eqx.Module):
    linear: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key: jax.Array) -> None:
        self.linear = eqx.nn.Linear(3, 3, key=key)
        self.norm = eqx.nn.BatchNorm(3, "batch")
        self.dropout = eqx.nn.Dropout(0.5)

    def __call__(self, x: jax.Array, state: eqx.nn.State, key: jax.Array) -> tuple:
        x, state = self.norm(self.linear(x), state)
        return self.dropout(x, key=key), state


def test_inference_mode_and_tree_at_on_flag_fields() -> None:
    block, eqx_state = eqx.nn.make_with_state(Block)(KEY)
    model, state = eqxst.mutable((block, eqx_state))
    assert model.norm.inference == False  # noqa: E712 (a flag reads as its bool)
    evaluating = eqx.nn.inference_mode(model)
    assert evaluating.norm.inference and evaluating.dropout.inference
    assert not model.norm.inference  # the input is unchanged, as in Equinox
    old = float(model.linear.bias[0])
    evaluating.linear.bias[0] = 5.0  # tree_at rebuilds the tree around the same storage
    assert float(model.linear.bias[0]) == 5.0
    model.linear.bias[0] = old
    again = eqx.nn.inference_mode(evaluating, value=False)
    assert not again.dropout.inference
    field = type(model.norm).__dict__["inference"]  # the flag's descriptor
    with pytest.raises(AttributeError, match="inference"):
        field.__get__(object.__new__(type(model.norm)))  # an instance never filled in
    flipped = eqx.tree_at(lambda m: m.dropout.inference, model, True)
    assert flipped.dropout.inference and repr(flipped.dropout.inference) == "True"

    x = jax.random.normal(jax.random.key(1), (6, 3))
    eqx_eval = eqx.nn.inference_mode(block)

    @jax.jit
    def evaluate(model: Block, state: eqx.nn.State, x: jax.Array) -> jax.Array:
        call = lambda x: model(x, state, KEY)[0]
        return jax.vmap(call, axis_name="batch")(x)

    want = jax.vmap(lambda x: eqx_eval(x, eqx_state, KEY)[0], axis_name="batch")(x)
    np.testing.assert_allclose(evaluate(evaluating, state, x), want, rtol=1e-5, atol=1e-6)
    assert type(eqxst.freeze(evaluating).norm.inference) is bool
    assert eqx.tree_equal(eqxst.freeze(evaluating), eqx_eval)


# ----------------------------------------------------------------------------- 8: Partial
def test_partial_eval_idiom_under_vmap() -> None:
    block, eqx_state = eqx.nn.make_with_state(Block)(KEY)
    model, state = eqxst.mutable((block, eqx_state))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    keys = jax.random.split(KEY, 6)
    want, _ = jax.vmap(eqx.Partial(eqx.nn.inference_mode(block), state=eqx_state))(x, key=keys)

    @jax.jit
    def evaluate(model: Block, state: eqx.nn.State, x: jax.Array) -> jax.Array:
        out, _ = jax.vmap(eqx.Partial(eqx.nn.inference_mode(model), state=state))(x, key=keys)
        return out

    np.testing.assert_allclose(evaluate(model, state, x), want, rtol=1e-5, atol=1e-6)
    # Outside jit too; the state that comes back is a batched snapshot (plain arrays).
    _, returned = jax.vmap(eqx.Partial(eqx.nn.inference_mode(model), state=state))(x, key=keys)
    assert type(returned) is eqx.nn.State
    # In training mode the batch statistics cannot be written inside vmap: loud, with the fix.
    with pytest.raises(st.VariableWriteError, match=r"in_place"):
        jax.vmap(eqx.Partial(model, state=state), axis_name="batch")(x, key=keys)


# ----------------------------------------------------------------------------- 9: packed
def test_packed_state_with_in_place() -> None:
    bn, eqx_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", momentum=0.5)
    model, state = eqxst.mutable((bn, eqx_state))
    packed = st.mutable(state, packed=True)
    batched = lambda m: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    x = jax.random.normal(jax.random.key(1), (5, 3))

    @jax.jit
    def forward(model: eqx.nn.BatchNorm, packed: object, x: jax.Array) -> jax.Array:
        return eqxst.in_place(batched(model))(x, packed)[0]

    for _ in range(2):
        out = forward(model, packed, x)
        want, eqx_state = batched(bn)(x, eqx_state)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        packed.get(model.ema_state_index), eqx_state.get(bn.ema_state_index), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, returned = eqxst.in_place(batched(model))(x, packed)
    assert returned is packed


# ----------------------------------------------------------------------------- 10: vmap
def test_equinox_calling_convention_under_vmap_needs_in_place_and_says_so() -> None:
    # JAX refuses any write into an unmapped ref inside vmap (its batching rule for the
    # write raises even for an unbatched value), so the unchanged call cannot commit;
    # the error names the fix, and nothing was written.
    bn, eqx_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch")
    model, state = eqxst.mutable((bn, eqx_state))
    before = [np.asarray(v) for v in jtu.tree_leaves(eqxst.freeze(state))]
    x = jnp.ones((4, 3))
    call = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    with pytest.raises(st.VariableWriteError, match=r"inside jax.vmap.*in_place\(jax.vmap"):
        call(x, state)
    after = [np.asarray(v) for v in jtu.tree_leaves(eqxst.freeze(state))]
    assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    eqxst.in_place(call)(x, state)
    assert not bool(state.get(model.ema_first_time_index))
