"""adapters/_equinox/_convert.py and _classes.py: converting Equinox models and back."""

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
from _equinox import KEY, assert_trees_close, is_variable, variables
from statetree.adapters import equinox as eqxst

import statetree as st


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


# ----------------------------------------------------------------------------- surgery
def head_grads(model: eqx.nn.MLP, x: jax.Array) -> eqx.nn.MLP:
    return eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x) ** 2))(model)


def test_tree_at_surgery_is_refused_by_the_optimizer_naming_the_fix() -> None:
    model = eqxst.mutable(eqx.nn.MLP(2, 3, 8, 1, key=KEY))
    model = eqx.tree_at(lambda m: m.layers[-1], model, eqx.nn.Linear(8, 5, key=KEY))
    assert not is_variable(model.layers[-1].weight)  # the inserted part is plain
    optimizer = st.Optimizer(model, optax.sgd(0.1))
    grads = head_grads(eqxst.freeze(model), jnp.ones((2, 2)))
    before = eqxst.freeze(model)
    with pytest.raises(st.StructureError, match=r"surgery.*Convert the model\s+again") as e:
        optimizer.update(model, grads)
    assert "['layers'][1]['weight']" in str(e.value)
    assert eqx.tree_equal(eqxst.freeze(model), before)


def test_converting_again_after_surgery_trains_like_equinox() -> None:
    mlp = eqx.nn.MLP(2, 3, 8, 1, key=KEY)
    head = eqx.nn.Linear(8, 5, key=jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (4, 2))
    model = eqxst.mutable(mlp)
    model = eqxst.mutable(eqx.tree_at(lambda m: m.layers[-1], model, head))
    kept = model.layers[0].weight
    assert eqxst.mutable(model).layers[0].weight is kept  # converted parts are kept
    assert type(model.layers[-1].weight) is st.Param
    optimizer = st.Optimizer(model, optax.sgd(0.1))
    jax.jit(lambda m, o: o.update(m, head_grads(eqxst.freeze(m), x)))(model, optimizer)

    plain = eqx.tree_at(lambda m: m.layers[-1], mlp, head)
    updates, _ = optax.sgd(0.1).update(head_grads(plain, x), optax.sgd(0.1).init(plain))
    # One jitted program against Equinox's eager ops: the gradient's sums are rounded in
    # another order, so an element may differ by an ulp of the weights' scale (|w| < 1,
    # a float32 ulp there is at most 6e-8), which is large relative to an element near 0.
    want = eqx.apply_updates(plain, updates)
    assert_trees_close(eqxst.freeze(model), want, rtol=1e-6, atol=1.2e-7)


def test_a_filter_spec_is_built_on_the_frozen_model() -> None:
    # Equinox's frozen-layer example: train only the last layer.
    mlp = eqx.nn.MLP(2, 3, 8, 1, key=KEY)
    model = eqxst.mutable(mlp)
    last = lambda t: (t.layers[-1].weight, t.layers[-1].bias)
    spec = jtu.tree_map(lambda _: False, model)  # built on the converted model
    with pytest.raises(ValueError, match="different types"):  # Equinox's own refusal
        eqx.partition(eqxst.freeze(model), spec)
    # The fix: build it on the plain model that eqx.partition will see.
    spec = jtu.tree_map(lambda _: False, eqxst.freeze(model))
    spec = eqx.tree_at(last, spec, replace=(True, True))
    x = jax.random.normal(jax.random.key(2), (4, 2))

    def grads_of(model: eqx.nn.MLP) -> eqx.nn.MLP:
        diff, static = eqx.partition(model, spec)
        loss = lambda d: jnp.sum(jax.vmap(eqx.combine(d, static))(x) ** 2)
        return eqx.filter_grad(loss)(diff)

    optimizer = st.Optimizer(model, optax.sgd(0.1), wrt=lambda path, _: path[:2] == ("layers", 1))
    jax.jit(lambda m, o: o.update(m, grads_of(eqxst.freeze(m))))(model, optimizer)
    updates, _ = optax.sgd(0.1).update(grads_of(mlp), optax.sgd(0.1).init(mlp))
    assert_trees_close(eqxst.freeze(model), eqx.apply_updates(mlp, updates), rtol=1e-6)
    np.testing.assert_array_equal(model.layers[0].weight[...], mlp.layers[0].weight)


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
