"""st.Optimizer: in-place optax steps equal to the functional optax loop."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import statetree as st


def make_model() -> dict:
    """A small mutable model: two Params in nested containers, one BatchStat."""
    return st.mutable(
        {
            "dense": {
                "kernel": st.Param(jnp.arange(6.0).reshape(2, 3) / 6),
                "bias": st.Param(jnp.full(3, 0.5)),
            },
            "stats": [st.BatchStat(jnp.zeros(3))],
        }
    )


def loss_fn(params: dict, x: jax.Array) -> jax.Array:
    out = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.sum(jnp.sin(out) ** 2)


X = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)


@jax.jit
def train_step(model: dict, optimizer: st.Optimizer, x: jax.Array) -> jax.Array:
    graphdef, params, rest = st.split(model, st.Param, ...)

    def loss(params: st.State) -> jax.Array:
        m = st.merge(graphdef, params, rest)
        m["stats"][0][...] += 1.0  # a non-differentiable write inside the loss
        return loss_fn(m, x)

    value, grads = jax.value_and_grad(loss)(st.freeze(params))
    optimizer.update(model, grads)
    return value


TRANSFORMS = {
    "adam": lambda: optax.adam(0.1),
    "chain-clip-adamw": lambda: optax.chain(
        optax.clip_by_global_norm(0.5), optax.adamw(0.05, weight_decay=0.1)
    ),
    "sgd-schedule": lambda: optax.sgd(optax.exponential_decay(0.3, 1, 0.5), momentum=0.9),
    "multisteps": lambda: optax.MultiSteps(optax.adam(0.1), every_k_schedule=2),
    "inject-hyperparams": lambda: optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.05),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_matches_functional_optax_step_for_step(name: str) -> None:
    model = make_model()
    optimizer = st.Optimizer(model, TRANSFORMS[name]())

    tx = TRANSFORMS[name]()
    params = st.unbox(st.freeze(model))
    del params["stats"]
    state = tx.init(params)
    for step in range(4):
        loss = train_step(model, optimizer, X)
        ref_loss, grads = jax.value_and_grad(loss_fn)(params, X)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        for key in ("kernel", "bias"):
            np.testing.assert_allclose(
                model["dense"][key][...], params["dense"][key], rtol=1e-6, atol=1e-7
            )
        assert int(optimizer.step[...]) == step + 1
    # The optimizer's state equals optax's, array for array.
    ours = jax.tree.leaves(st.unbox(optimizer.opt_state))
    np.testing.assert_allclose(
        np.concatenate([np.ravel(a) for a in ours]),
        np.concatenate([np.ravel(a) for a in jax.tree.leaves(state)]),
        rtol=1e-6,
        atol=1e-7,
    )
    assert float(model["stats"][0][0]) == 4.0


def test_holds_no_model_variable_and_jit_sees_no_aliasing() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.adam(0.1))
    assert st.find_aliases((model, optimizer)) == []
    model_ids = {id(v) for v in st.state(model).values()}
    assert not model_ids & {id(v) for v in st.state(optimizer).values()}
    assert all(isinstance(v, st.OptState) and v.mutable for v in st.state(optimizer).values())
    train_step(model, optimizer, X)  # would raise on aliasing


def test_optimizer_is_a_pytree_that_freezes_and_thaws() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.adam(0.1))
    optimizer.update(
        model, st.State({("dense", "kernel"): jnp.ones((2, 3)), ("dense", "bias"): jnp.ones(3)})
    )
    frozen = st.freeze(optimizer)
    assert isinstance(frozen, st.Optimizer) and not frozen.step.mutable
    assert int(frozen.step[...]) == 1 and frozen.paths == optimizer.paths
    thawed = st.mutable(frozen)
    thawed.update(model, {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}})
    assert int(thawed.step[...]) == 2 and int(optimizer.step[...]) == 1


def test_grads_of_the_whole_frozen_model_are_accepted() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.sgd(1.0))
    grads = jax.tree.map(jnp.ones_like, st.freeze(model))  # BatchStat grads included
    optimizer.update(model, grads)
    np.testing.assert_allclose(model["dense"]["bias"][...], jnp.full(3, -0.5))
    assert float(model["stats"][0][0]) == 0.0


def test_wrt_selects_by_path() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.sgd(1.0), wrt=st.PathContains("bias"))
    assert optimizer.paths == (("dense", "bias"),)
    optimizer.update(model, st.State({("dense", "bias"): jnp.ones(3)}))
    np.testing.assert_allclose(model["dense"]["bias"][...], jnp.full(3, -0.5))
    np.testing.assert_allclose(model["dense"]["kernel"][...], jnp.arange(6.0).reshape(2, 3) / 6)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_hyperparams_read_and_set_in_place(packed: bool) -> None:
    model = st.mutable(make_model(), packed=packed)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    optimizer = st.Optimizer(model, tx, packed=packed)
    lr = optimizer.hyperparams["learning_rate"]
    assert isinstance(lr, st.OptState) and float(lr[...]) == pytest.approx(0.1)

    @jax.jit
    def set_lr(optimizer: st.Optimizer, value: jax.Array) -> None:
        optimizer.hyperparams["learning_rate"][...] = value

    set_lr(optimizer, jnp.float32(0.0))
    before = np.asarray(model["dense"]["kernel"][...])
    train_step(model, optimizer, X)
    np.testing.assert_array_equal(model["dense"]["kernel"][...], before)
    assert int(optimizer.step[...]) == 1 and float(lr[...]) == 0.0
    lr[...] = 1.0
    train_step(model, optimizer, X)
    assert not np.allclose(model["dense"]["kernel"][...], before)


# ---------------------------------------------------------------------- errors teach
GRADS = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}


def snapshot(*trees: object) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(st.unbox(trees))]


def assert_unchanged(before: list[np.ndarray], *trees: object) -> None:
    for a, b in zip(before, snapshot(*trees), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tx_must_be_a_gradient_transformation() -> None:
    with pytest.raises(TypeError, match=r"tx must be an optax GradientTransformation"):
        st.Optimizer(make_model(), optax.adam)


def test_wrt_matching_nothing_is_an_error() -> None:
    with pytest.raises(
        st.StructureError,
        match=r"wrt=Cache\): wrt matches no Variable.*"
        r"BatchStat, Param",
    ):
        st.Optimizer(make_model(), optax.adam(0.1), wrt=st.Cache)


def test_wrt_must_be_a_filter() -> None:
    with pytest.raises(TypeError, match=r"Not a filter: 3"):
        st.Optimizer(make_model(), optax.adam(0.1), wrt=3)


def test_grads_with_missing_extra_and_misshaped_paths_are_named() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.adam(0.1))
    before = snapshot(model, optimizer)
    bad = {"dense": {"kernel": jnp.ones((3, 2)), "scale": jnp.ones(3)}}
    with pytest.raises(
        st.StructureError,
        match=r"(?s)no gradient for:\n  \['dense'\]\['bias'\].*does not train:\n"
        r"  \['dense'\]\['scale'\].*\['dense'\]\['kernel'\]: gradient \(3, 2\), Variable \(2, 3\)",
    ):
        optimizer.update(model, bad)
    assert_unchanged(before, model, optimizer)


def test_frozen_model_is_refused_with_paths() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.adam(0.1))
    frozen = st.freeze(model)
    with pytest.raises(
        st.FrozenVariableError, match=r"(?s)2 of the model's.*\['dense'\]\['bias'\]"
    ):
        optimizer.update(frozen, GRADS)
    assert int(optimizer.step[...]) == 0


def test_model_of_another_structure_is_refused() -> None:
    model = make_model()
    optimizer = st.Optimizer(model, optax.adam(0.1))
    other = st.mutable({"dense": {"kernel": st.Param(jnp.ones((2, 3)))}, "w": st.Param(1.0)})
    with pytest.raises(
        st.StructureError,
        match=r"(?s)not in the model:\n  \['dense'\]\['bias'\]"
        r".*unknown to this optimizer:\n  \['w'\]",
    ):
        optimizer.update(other, GRADS)


def test_frozen_optimizer_is_refused() -> None:
    model = make_model()
    optimizer = st.freeze(st.Optimizer(model, optax.adam(0.1)))
    before = snapshot(model)
    with pytest.raises(
        st.FrozenVariableError, match=r"own state is frozen.*st.mutable\(optimizer\)"
    ):
        optimizer.update(model, GRADS)
    assert_unchanged(before, model)


def test_hyperparams_without_injection() -> None:
    optimizer = st.Optimizer(make_model(), optax.adam(0.1))
    with pytest.raises(AttributeError, match=r"optax.inject_hyperparams"):
        optimizer.hyperparams


def test_hyperparams_with_a_name_twice() -> None:
    tx = optax.chain(
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.2),
    )
    optimizer = st.Optimizer(make_model(), tx)
    with pytest.raises(ValueError, match=r"share a name:\n  learning_rate: \[0\].*\[1\]"):
        optimizer.hyperparams


def test_a_state_that_changes_structure_is_refused() -> None:
    def init(params: object) -> dict:
        return {"a": jnp.zeros(())}

    def update(updates: object, state: object, params: object = None) -> tuple:
        return updates, {"a": jnp.zeros(()), "b": jnp.zeros(())}

    model = make_model()
    optimizer = st.Optimizer(model, optax.GradientTransformation(init, update))
    before = snapshot(model, optimizer)
    with pytest.raises(
        st.StructureError, match=r"returned a state with 2 arrays, but tx.init made 1"
    ):
        optimizer.update(model, GRADS)
    assert_unchanged(before, model, optimizer)


def test_raw_refs_are_trained_in_place_and_extra_args_reach_tx() -> None:
    model = {"w": jax.new_ref(jnp.array([1.0, 2.0]))}
    tx = optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(patience=0, factor=0.5))
    optimizer = st.Optimizer(model, tx, wrt=...)
    state = tx.init({"w": jnp.array([1.0, 2.0])})
    ref = {"w": jnp.array([1.0, 2.0])}
    for loss in (3.0, 4.0, 5.0):
        grads = {"w": jnp.ones(2)}
        optimizer.update(model, grads, value=jnp.float32(loss))
        updates, state = tx.update(grads, state, ref, value=jnp.float32(loss))
        ref = optax.apply_updates(ref, updates)
        np.testing.assert_allclose(model["w"][...], ref["w"])
    assert float(ref["w"][0]) != 1.0 - 3 * 0.5  # the plateau rule did scale the steps


# ---------------------------------------------------------------------- packed
def make_pair(tx: optax.GradientTransformation) -> tuple:
    """A plain model and optimizer, and the same packed."""
    plain_model, packed_model = make_model(), st.mutable(make_model(), packed=True)
    plain_opt = st.Optimizer(plain_model, tx)
    packed_opt = st.Optimizer(packed_model, tx, packed=True)
    return plain_model, plain_opt, packed_model, packed_opt


@pytest.mark.parametrize(
    "tx",
    [optax.adam(0.1), optax.adam(0.1, mu_dtype=jnp.bfloat16), optax.sgd(0.1)],
    ids=["adam", "adam-bf16-mu", "sgd-stateless"],
)
def test_packed_optimizer_passes_one_ref_per_buffer(tx: optax.GradientTransformation) -> None:
    model = st.mutable(make_model(), packed=True)
    optimizer = st.Optimizer(model, tx, packed=True)
    leaves = jax.tree.leaves(optimizer)
    # What jax.jit receives: the buffers, the step counter inside one of them.
    assert all(isinstance(leaf, jax.Ref) for leaf in leaves)
    assert any(leaf is optimizer.step._raw.buffer for leaf in leaves)
    if isinstance(optimizer.opt_state, st.Packed):  # sgd has no optax state to pack
        assert leaves == list(optimizer.opt_state.buffers)
    else:
        assert len(leaves) == 1
    train_step(model, optimizer, X)
    train_step(model, optimizer, X)
    assert int(optimizer.step[...]) == 2


def test_packed_and_plain_optimizers_agree() -> None:
    plain_model, plain_opt, packed_model, packed_opt = make_pair(optax.adam(0.1))
    assert st.state(packed_opt).paths() == st.state(plain_opt).paths()
    assert st.state(packed_opt).paths()[-1] == ("step",)
    assert ("opt_state", 0, "mu", "dense", "kernel") in st.state(packed_opt).paths()
    for _ in range(3):
        np.testing.assert_allclose(
            train_step(packed_model, packed_opt, X),
            train_step(plain_model, plain_opt, X),
            rtol=1e-6,
        )
    for a, b in zip(
        jax.tree.leaves(st.unbox(st.freeze((packed_model, packed_opt)))),
        jax.tree.leaves(st.unbox(st.freeze((plain_model, plain_opt)))),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert int(packed_opt.step[...]) == 3
    assert repr(packed_opt) == repr(plain_opt)
    assert isinstance(packed_opt.step, st.OptState) and packed_opt.step.mutable


def test_packed_optimizer_round_trips_keep_the_step() -> None:
    model = st.mutable(make_model(), packed=True)
    optimizer = st.Optimizer(model, optax.adam(0.1), packed=True)
    optimizer.update(model, GRADS)
    optimizer.update(model, GRADS)
    paths = st.state(optimizer).paths()

    frozen = st.freeze(optimizer)
    assert isinstance(frozen, st.Optimizer) and not frozen.step.mutable
    assert int(frozen.step[...]) == 2 and st.state(frozen).paths() == paths
    thawed = st.mutable(frozen)
    thawed.update(model, GRADS)
    assert int(thawed.step[...]) == 3 and int(optimizer.step[...]) == 2

    assert int(st.state(optimizer)[("step",)][...]) == 2
    graphdef, state = st.split(optimizer)
    merged = st.merge(graphdef, state)
    merged.update(model, GRADS)  # the merged optimizer writes the same buffers
    assert int(optimizer.step[...]) == 3

    st.update(optimizer, st.State({("step",): jnp.int32(7)}))
    assert int(optimizer.step[...]) == 7
    assert int(optimizer.opt_state[0].count[...]) == 3  # its neighbour in the buffer


@pytest.mark.parametrize("saved_packed", [True, False], ids=["packed-to-plain", "plain-to-packed"])
def test_checkpoints_cross_between_packed_and_plain(
    tmp_path: pathlib.Path, saved_packed: bool
) -> None:
    plain_model, plain_opt, packed_model, packed_opt = make_pair(optax.adam(0.1))
    source, target = (packed_opt, plain_opt) if saved_packed else (plain_opt, packed_opt)
    model = packed_model if saved_packed else plain_model
    train_step(model, source, X)
    train_step(model, source, X)
    st.save(tmp_path / "ckpt", source)
    st.restore(tmp_path / "ckpt", target)
    assert int(target.step[...]) == 2
    for a, b in zip(
        jax.tree.leaves(st.unbox(st.freeze(target))),
        jax.tree.leaves(st.unbox(st.freeze(source))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_numpy_parameters_are_accepted() -> None:
    params = {"w": np.ones(3, np.float32)}
    optimizer = st.Optimizer(params, optax.adam(0.1), wrt=...)
    assert int(optimizer.step[...]) == 0
    assert optimizer.opt_state[0].mu[("w",)].shape == (3,)


# ------------------------------------------------- packed, large slots: one by one
# Slots this large take their writes one by one (see statetree._views._write_views),
# where small ones take one whole-buffer write.
WIDE = 96  # 9,216 elements a slot


def make_wide(packed: bool) -> dict:
    """Two large Params and a BatchStat that the optimizer does not train, which packing
    puts in one buffer with them (a buffer the optimizer writes only in part)."""
    k1, k2 = jax.random.split(jax.random.key(3))
    tree = {
        "w1": st.Param(jax.random.normal(k1, (WIDE, WIDE)) / WIDE),
        "w2": st.Param(jax.random.normal(k2, (WIDE, WIDE)) / WIDE),
        "stats": st.BatchStat(jnp.zeros((WIDE, WIDE))),
    }
    return st.mutable(tree, packed=packed)


X_WIDE = jnp.linspace(-1.0, 1.0, 4 * WIDE).reshape(4, WIDE)


@jax.jit
def wide_step(model: dict, optimizer: st.Optimizer) -> tuple[jax.Array, jax.Array]:
    def loss(params: st.State) -> jax.Array:
        m = st.merge(graphdef, params, rest)
        return jnp.sum(jnp.tanh(X_WIDE @ m["w1"] @ m["w2"]) ** 2)

    graphdef, params, rest = st.split(model, st.Param, ...)
    grads = jax.grad(loss)(st.freeze(params))
    optimizer.update(model, grads)
    model["stats"][...] += model["w1"][...]  # reads after the optimizer's writes
    return model["w1"][...].sum(), model["stats"][...].sum()


@pytest.mark.parametrize(
    "tx",
    [optax.adam(0.01), optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(0.01))],
    ids=["adam", "clip-adamw"],
)
def test_packed_large_slots_match_plain_bit_for_bit(tx: optax.GradientTransformation) -> None:
    plain, packed = make_wide(False), make_wide(True)
    plain_opt, packed_opt = st.Optimizer(plain, tx), st.Optimizer(packed, tx, packed=True)
    for _ in range(2):
        np.testing.assert_array_equal(wide_step(packed, packed_opt), wide_step(plain, plain_opt))
    for a, b in zip(
        jax.tree.leaves(st.unbox(st.freeze((packed, packed_opt)))),
        jax.tree.leaves(st.unbox(st.freeze((plain, plain_opt)))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert int(packed_opt.step[...]) == 2


@pytest.mark.filterwarnings("ignore:Casting from complex:DeprecationWarning")  # optax's cast
def test_packed_large_slots_refuse_bad_values_as_plain_does() -> None:
    plain, packed = make_wide(False), make_wide(True)
    messages = []
    for model, packed_ in ((plain, False), (packed, True)):
        optimizer = st.Optimizer(model, optax.adam(0.01), packed=packed_)
        before = jax.tree.leaves(st.unbox(st.freeze((model, optimizer))))
        grads = {"w1": jnp.ones((WIDE, WIDE), jnp.complex64), "w2": jnp.ones((WIDE, WIDE))}
        with pytest.raises(st.VariableWriteError, match="nothing was written") as e:
            jax.jit(optimizer.update)(model, grads)
        messages.append(str(e.value))
        after = jax.tree.leaves(st.unbox(st.freeze((model, optimizer))))
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
    assert messages[0] == messages[1]
    assert "complex64 -> float32" in messages[1]
