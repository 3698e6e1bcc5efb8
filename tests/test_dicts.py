"""statetree.adapters.dicts: plain trees, Flax-linen collections (against a real
flax.linen model) and Haiku-style functions, step for step against functional training."""

import doctest
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from statetree.adapters import dicts
from typeguard import suppress_type_checks

import statetree as st

LR = 0.1


def leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, st.Variable))


def sgd_in_place(params, grads):
    for p, g in zip(leaves(params), leaves(grads), strict=True):
        p[...] -= LR * g


def assert_tree_close(got, want):
    got, want = dicts.freeze(got), dicts.freeze(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- plain trees
def test_mutable_and_freeze_round_trip():
    tree = {"dense": {"kernel": jnp.ones((2, 3)), "bias": np.zeros(3)}, "blocks": [jnp.ones(2)]}
    tree["act"] = "gelu"
    tree["depth"] = 2
    m = dicts.mutable(tree)
    assert isinstance(m["dense"]["kernel"], st.Param) and m["dense"]["kernel"].mutable
    assert isinstance(m["blocks"][0], st.Param)
    assert m["act"] == "gelu" and m["depth"] == 2
    assert not isinstance(tree["dense"]["kernel"], st.Variable)  # input untouched
    back = dicts.freeze(m)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(isinstance(x, st.Variable) for x in jax.tree.leaves(back))


def test_mutable_kind_and_existing_variables():
    shared = st.Cache(jnp.zeros(2))
    m = dicts.mutable({"a": jnp.ones(2), "b": shared, "c": shared}, kind=st.BatchStat)
    assert type(m["a"]) is st.BatchStat
    assert type(m["b"]) is st.Cache and m["b"].mutable
    assert m["b"] is m["c"]  # one Variable stays one
    assert not shared.mutable


def test_mutable_tree_updates_in_place_under_jit():
    params = dicts.mutable({"w": [jnp.zeros(3), jnp.ones(3)]})

    @jax.jit
    def step(params):
        for w in params["w"]:
            w[...] += 1

    step(params)
    step(params)
    np.testing.assert_array_equal(dicts.freeze(params)["w"][1], jnp.full(3, 3.0))


def test_mutable_rejects_a_kind_that_is_not_a_variable_class():
    with pytest.raises(TypeError, match=r"dicts.mutable\(tree, kind=...\).*st.Param"):
        dicts.mutable({"w": jnp.ones(2)}, kind=int)


# ---------------------------------------------------------------------------- collections
class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(2)(nn.gelu(x))


MODEL = MLP()
X = jax.random.normal(jax.random.key(0), (6, 3))
Y = jnp.ones((6, 2))


@pytest.fixture(scope="module")
def variables():
    return MODEL.init(jax.random.key(1), X)


def test_from_collections_kinds(variables):
    extra = {**variables, "cache": {"k": jnp.zeros(2)}, "counts": {"n": jnp.zeros((), int)}}
    state = dicts.from_collections(extra)
    kinds = {name: {type(v) for v in st.state(tree).values()} for name, tree in state.items()}
    assert kinds == {
        "params": {st.Param},
        "batch_stats": {st.BatchStat},
        "cache": {st.Cache},
        "counts": {st.Variable},
    }
    assert all(st.is_mutable(v) for v in st.state(state).values())
    custom = dicts.from_collections(extra, kinds={"counts": st.BatchStat})
    assert type(custom["counts"]["n"]) is st.BatchStat


def test_from_collections_errors():
    # Annotations say the same; these checks teach callers who run without typeguard.
    with (
        suppress_type_checks(),
        pytest.raises(TypeError, match=r"expected a mapping from collection name.*list"),
    ):
        dicts.from_collections([jnp.ones(2)])
    with suppress_type_checks(), pytest.raises(TypeError, match=r"names are strings.*key 0"):
        dicts.from_collections({0: {"w": jnp.ones(2)}})
    with pytest.raises(TypeError, match=r"kinds=\{'stats': ...\}.*Variable class"):
        dicts.from_collections({"stats": {}}, kinds={"stats": dict})


def test_bind_mutable_choices(variables):
    state = dicts.from_collections({**variables, "cache": {"k": jnp.zeros(2)}})
    assert dicts.bind(MODEL.apply, state).mutable == ("batch_stats", "cache")
    assert dicts.bind(MODEL.apply, state, mutable="cache").mutable == ("cache",)
    assert dicts.bind(MODEL.apply, state, mutable=True).mutable == (
        "params",
        "batch_stats",
        "cache",
    )
    assert dicts.bind(MODEL.apply, state, mutable=False).mutable == ()


@pytest.fixture(scope="module")
def functional_step():
    @jax.jit
    def step(variables, x, y):
        def loss_fn(params):
            out, updates = MODEL.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                mutable=["batch_stats"],
            )
            return ((out - y) ** 2).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        params = jax.tree.map(lambda p, g: p - LR * g, variables["params"], grads)
        return loss, {"params": params, "batch_stats": updates["batch_stats"]}

    return step


@pytest.fixture(scope="module")
def bound_step():
    """The bound function passed to jit; params rebound frozen inside the loss."""

    @jax.jit
    def step(f, x, y):
        def loss_fn(params):
            return ((f.replace(params=params)(x) - y) ** 2).mean()

        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(f.collections["params"]))
        sgd_in_place(f.collections["params"], grads)
        return loss

    return step


def test_bound_training_matches_functional_flax(variables, functional_step, bound_step):
    state = dicts.from_collections(variables)
    f = dicts.bind(MODEL.apply, state)
    reference = variables
    losses = []
    for _ in range(3):
        want, reference = functional_step(reference, X, Y)
        got = bound_step(f, X, Y)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert_tree_close(state, reference)  # the caller's Variables, updated in place
        losses.append(float(got))
    assert losses[-1] < losses[0]
    assert not any(isinstance(x, st.Variable) for x in jax.tree.leaves(dicts.freeze(state)))


def test_bind_inside_jit_matches_functional_flax(variables, functional_step):
    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            f = dicts.bind(MODEL.apply, {**state, "params": params}, mutable=["batch_stats"])
            return ((f(x) - y) ** 2).mean()

        loss, grads = jax.value_and_grad(loss_fn)(dicts.freeze(state["params"]))
        sgd_in_place(state["params"], grads)
        return loss

    state = dicts.from_collections(variables)
    reference = variables
    for _ in range(2):
        want, reference = functional_step(reference, X, Y)
        np.testing.assert_allclose(step(state, X, Y), want, rtol=1e-6)
        assert_tree_close(state, reference)


def test_bound_is_a_jit_argument_that_does_not_retrace(variables):
    traces = []

    @jax.jit
    def apply(f, x):
        traces.append(1)
        return f(x)

    state = dicts.from_collections(variables)
    apply(dicts.bind(MODEL.apply, state), X)
    apply(dicts.bind(MODEL.apply, state), X)  # a new Bound, equal static parts
    assert len(traces) == 1
    apply(dicts.bind(MODEL.apply, state, mutable=True), X)  # the mutable names are static
    assert len(traces) == 2
    # The bound function holds the collections' own Variables: pass one, not both.
    f = dicts.bind(MODEL.apply, state)
    with pytest.raises(st.AliasError, match=r"\['batch_stats'\]\['BatchNorm_0'\]\['mean'\]"):
        st.check_aliases((f, state))


def test_convert_and_bind_inside_jit(variables):
    # A functional wrapper: refs made and written inside the trace, only arrays out.
    @jax.jit
    def functional(variables, x):
        state = dicts.from_collections(variables)
        out = dicts.bind(MODEL.apply, state)(x)
        return out, dicts.freeze(state)

    out, new = functional(variables, X)
    want, updates = jax.jit(lambda v, x: MODEL.apply(v, x, mutable=["batch_stats"]))(variables, X)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert_tree_close(new["batch_stats"], updates["batch_stats"])


def test_bound_eval_mode_reads_running_stats(variables):
    state = dicts.from_collections(variables)
    before = dicts.freeze(state)
    out = dicts.bind(MODEL.apply, state, mutable=False)(X, train=False)
    np.testing.assert_allclose(out, MODEL.apply(variables, X, train=False), rtol=1e-6)
    assert_tree_close(state, before)


def test_bind_errors_teach(variables):
    state = dicts.from_collections(variables)
    with pytest.raises(st.StructureError, match=r"'batch_stat' \(did you mean 'batch_stats'\?\)"):
        dicts.bind(MODEL.apply, state, mutable=["batch_stat"])
    with pytest.raises(st.StructureError, match=r"'intermediates'.*must first come from"):
        dicts.bind(MODEL.apply, state, mutable="intermediates")
    with pytest.raises(
        st.StructureError,
        match=r"(?s)'batch_stats' must hold mutable.*\['batch_stats'\]\['BatchNorm_0'\]\['mean'\]"
        r": a bare array.*dicts.from_collections",
    ):
        dicts.bind(MODEL.apply, variables)
    frozen = {**state, "batch_stats": st.freeze(state["batch_stats"])}
    with pytest.raises(st.StructureError, match=r"\['var'\]: a frozen BatchStat"):
        dicts.bind(MODEL.apply, frozen)
    with suppress_type_checks():
        with pytest.raises(TypeError, match=r"apply_fn must be callable, e.g. model.apply"):
            dicts.bind("MODEL.apply", state)
        with pytest.raises(TypeError, match=r"collections must map collection names.*list"):
            dicts.bind(MODEL.apply, [state])
    f = dicts.bind(MODEL.apply, state)
    with pytest.raises(TypeError, match=r"no mutable= argument.*\['batch_stats'\]"):
        f(X, mutable=["params"])
    with pytest.raises(st.StructureError, match=r"no collection \['parms'\] to replace"):
        f.replace(parms=state["params"])


def _fake_apply(result):
    return lambda variables, *args, mutable: result


def test_wrong_return_structure_names_paths_and_writes_nothing(variables):
    state = dicts.from_collections(variables)
    before = dicts.freeze(state)
    stats = dicts.freeze(state["batch_stats"])
    layer = stats["BatchNorm_0"]

    def bound(result):
        return dicts.bind(_fake_apply(result), state)

    with pytest.raises(
        st.StructureError, match=r"must return \(out, updated_collections\).*Array"
    ):
        bound(jnp.ones(2))(X)
    with pytest.raises(st.StructureError, match=r"returned list as its updated collections"):
        bound((1, [stats]))(X)
    with pytest.raises(st.StructureError, match=r"missing \['batch_stats'\]; not mutable \['x'\]"):
        bound((1, {"x": stats}))(X)
    renamed = {"BatchNorm_0": {"mean": layer["mean"], "scale": layer["var"]}}
    with pytest.raises(
        st.StructureError,
        match=r"(?s)missing.*\['batch_stats'\]\['BatchNorm_0'\]\['var'\].*"
        r"extra.*\['batch_stats'\]\['BatchNorm_0'\]\['scale'\]",
    ):
        bound((1, {"batch_stats": renamed}))(X)
    # The first value fits, the second does not: neither is written.
    wrong = {"BatchNorm_0": {"mean": layer["mean"] + 1, "var": jnp.ones(3)}}
    with pytest.raises(st.StructureError, match=r"(?s)\['BatchNorm_0'\]\['var'\].*float32\[8\]"):
        bound((1, {"batch_stats": wrong}))(X)
    assert_tree_close(state, before)


def test_update_writes_into_batch_stats_under_grad():
    # The core path bind relies on: st.update of a differentiated value into a BatchStat.
    stats = st.mutable({"m": st.BatchStat(jnp.zeros(3))})

    def loss(p):
        st.update(stats, st.State({("m",): p * 2.0}))
        return (p * 2.0).sum()

    np.testing.assert_array_equal(jax.grad(loss)(jnp.ones(3)), jnp.full(3, 2.0))
    np.testing.assert_array_equal(stats["m"][...], jnp.full(3, 2.0))


# ---------------------------------------------------------------------------- haiku
def haiku_apply(params, state, rng, x, *, is_training=True):
    """Linear -> batch norm (running stats in `state`) -> dropout -> gelu -> Linear."""
    h = x @ params["linear"]["w"] + params["linear"]["b"]
    mean, var = h.mean(0), h.var(0)
    bn = state["bn"]
    if not is_training:
        mean, var = bn["mean"], bn["var"]
    h = (h - mean) / jnp.sqrt(var + 1e-5)
    keep = jax.random.bernoulli(rng, 0.9, h.shape)
    h = jnp.where(keep, h / 0.9, 0.0) if is_training else h
    out = jax.nn.gelu(h) @ params["out"]["w"]
    new_state = {
        "bn": {"mean": 0.9 * bn["mean"] + 0.1 * mean, "var": 0.9 * bn["var"] + 0.1 * var},
        "step": state["step"] + 1,
    }
    return out, new_state


def haiku_init():
    k1, k2 = jax.random.split(jax.random.key(2))
    params = {
        "linear": {"w": jax.random.normal(k1, (3, 8)) * 0.5, "b": jnp.zeros(8)},
        "out": {"w": jax.random.normal(k2, (8, 2)) * 0.5},
    }
    state = {"bn": {"mean": jnp.zeros(8), "var": jnp.ones(8)}, "step": jnp.zeros((), jnp.int32)}
    return params, state


def test_from_haiku_kinds():
    params, state = dicts.from_haiku(*haiku_init())
    assert {type(v) for v in st.state(params).values()} == {st.Param}
    assert {type(v) for v in st.state(state).values()} == {st.BatchStat}
    assert all(st.is_mutable(v) for v in st.state((params, state)).values())


def test_bound_haiku_training_matches_functional():
    @jax.jit
    def functional(params, state, rng):
        def loss_fn(params):
            out, new_state = haiku_apply(params, state, rng, X)
            return ((out - Y) ** 2).mean(), new_state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, jax.tree.map(lambda p, g: p - LR * g, params, grads), state

    @jax.jit
    def in_place(f, rng):
        def loss_fn(params):
            return ((f.replace(params=params)(rng, X) - Y) ** 2).mean()

        loss, grads = jax.value_and_grad(loss_fn)(st.freeze(f.params))
        sgd_in_place(f.params, grads)
        return loss

    ref_params, ref_state = haiku_init()
    params, state = dicts.from_haiku(ref_params, ref_state)
    f = dicts.bind_haiku(haiku_apply, params, state)
    losses = []
    for rng in jax.random.split(jax.random.key(3), 3):
        want, ref_params, ref_state = functional(ref_params, ref_state, rng)
        losses.append(float(in_place(f, rng)))
        np.testing.assert_allclose(losses[-1], want, rtol=1e-6)
        assert_tree_close(params, ref_params)
        assert_tree_close(state, ref_state)
    assert int(state["step"][...]) == 3
    assert losses[-1] < losses[0]
    # Keyword arguments pass through: evaluation reads the running statistics.
    out = f(jax.random.key(0), X, is_training=False)
    want, _ = haiku_apply(ref_params, ref_state, jax.random.key(0), X, is_training=False)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_bind_haiku_errors_teach():
    raw_params, raw_state = haiku_init()
    params, state = dicts.from_haiku(raw_params, raw_state)
    with pytest.raises(
        st.StructureError,
        match=r"(?s)the state must hold mutable.*\['state'\]\['bn'\]\['mean'\]: a bare array"
        r".*dicts.from_haiku",
    ):
        dicts.bind_haiku(haiku_apply, params, raw_state)
    with suppress_type_checks(), pytest.raises(TypeError, match=r"callable.*transform_with"):
        dicts.bind_haiku(None, params, state)
    with pytest.raises(st.StructureError, match=r"must return \(out, new_state\); .*tuple of 3"):
        dicts.bind_haiku(lambda p, s, r, x: (x, s, r), params, state)(None, X)
    before = dicts.freeze(state)

    def forgets_step(p, s, r, x):
        return x, {"bn": s["bn"]}

    with pytest.raises(st.StructureError, match=r"(?s)missing.*\['state'\]\['step'\]"):
        dicts.bind_haiku(forgets_step, params, state)(None, X)
    counter = dicts.bind_haiku(
        lambda p, s, r: (0, {"n": jnp.asarray(s["n"]) + 1}), params, {"n": 0}
    )  # a Python int is no Variable: nothing holds the count
    with pytest.raises(st.StructureError, match=r"(?s)extra.*\['state'\]\['n'\].*store an array"):
        counter(None)
    assert_tree_close(state, before)


@pytest.mark.parametrize("module", ["dicts", "_trees", "_haiku"])
def test_module_docstring_examples(module):
    module = importlib.import_module(f"statetree.adapters.{module}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module.__name__):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert result.attempted > 0
