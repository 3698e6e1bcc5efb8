"""User subclasses of every eqx.nn layer convert and run, eagerly and under jax.jit.

The corpus lists one small instance and one call per public ``eqx.nn`` module class; a
class Equinox adds later fails ``test_the_corpus_covers_every_eqx_nn_layer`` until it is
listed. Each is subclassed two ways (``pass``, and a ``__call__`` calling ``super()``),
converted, called, and compared with the same subclass in pure Equinox.
"""

import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _equinox import KEY, assert_trees_close
from statetree.adapters import equinox as eqxst

K1, K2 = jax.random.split(KEY)
X3 = jnp.linspace(-1.0, 1.0, 3)
X4 = jnp.linspace(-1.0, 1.0, 4)
SEQ = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
IMG1 = jnp.linspace(-1.0, 1.0, 6).reshape(1, 6)
IMG2 = jnp.linspace(-1.0, 1.0, 36).reshape(1, 6, 6)
IMG3 = jnp.linspace(-1.0, 1.0, 64).reshape(1, 4, 4, 4)
BATCH = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)

Call = Callable[[Any, Any], Any]  # (layer, state) -> output, or (output, state)
# name -> (arguments of the class, call, stateful)
CORPUS: dict[str, tuple[Callable[[], tuple[tuple, dict]], Call, bool]] = {
    "Linear": (lambda: ((3, 4), {"key": K1}), lambda m, s: m(X3), False),
    "Identity": (lambda: ((), {}), lambda m, s: m(X3), False),
    "Conv": (lambda: ((2, 1, 2, 3), {"key": K1}), lambda m, s: m(IMG2), False),
    "Conv1d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG1), False),
    "Conv2d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG2), False),
    "Conv3d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG3), False),
    "ConvTranspose": (lambda: ((2, 1, 2, 3), {"key": K1}), lambda m, s: m(IMG2), False),
    "ConvTranspose1d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG1), False),
    "ConvTranspose2d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG2), False),
    "ConvTranspose3d": (lambda: ((1, 2, 3), {"key": K1}), lambda m, s: m(IMG3), False),
    "Embedding": (lambda: ((5, 3), {"key": K1}), lambda m, s: m(jnp.array(2)), False),
    "MLP": (lambda: ((3, 2, 4, 1), {"key": K1}), lambda m, s: m(X3), False),
    "GRUCell": (lambda: ((3, 4), {"key": K1}), lambda m, s: m(X3, X4), False),
    "LSTMCell": (lambda: ((3, 4), {"key": K1}), lambda m, s: m(X3, (X4, X4)), False),
    "LayerNorm": (lambda: ((4,), {}), lambda m, s: m(X4), False),
    "GroupNorm": (lambda: ((2, 4), {}), lambda m, s: m(SEQ.T), False),
    "RMSNorm": (lambda: ((4,), {}), lambda m, s: m(X4), False),
    "WeightNorm": (lambda: ((eqx.nn.Linear(3, 3, key=K1),), {}), lambda m, s: m(X3), False),
    "Dropout": (lambda: ((0.5,), {}), lambda m, s: m(X4, key=K2), False),
    "MaxPool1d": (lambda: ((2,), {}), lambda m, s: m(IMG1), False),
    "MaxPool2d": (lambda: ((2,), {}), lambda m, s: m(IMG2), False),
    "MaxPool3d": (lambda: ((2,), {}), lambda m, s: m(IMG3), False),
    "AvgPool1d": (lambda: ((2,), {}), lambda m, s: m(IMG1), False),
    "AvgPool2d": (lambda: ((2,), {}), lambda m, s: m(IMG2), False),
    "AvgPool3d": (lambda: ((2,), {}), lambda m, s: m(IMG3), False),
    "Pool": (lambda: ((-jnp.inf, jax.lax.max, 1, 2), {}), lambda m, s: m(IMG1), False),
    "AdaptivePool": (lambda: (((3,), 1, jnp.max), {}), lambda m, s: m(IMG1), False),
    "AdaptiveAvgPool1d": (lambda: ((3,), {}), lambda m, s: m(IMG1), False),
    "AdaptiveAvgPool2d": (lambda: (((3, 3),), {}), lambda m, s: m(IMG2), False),
    "AdaptiveAvgPool3d": (lambda: (((2, 2, 2),), {}), lambda m, s: m(IMG3), False),
    "AdaptiveMaxPool1d": (lambda: ((3,), {}), lambda m, s: m(IMG1), False),
    "AdaptiveMaxPool2d": (lambda: (((3, 3),), {}), lambda m, s: m(IMG2), False),
    "AdaptiveMaxPool3d": (lambda: (((2, 2, 2),), {}), lambda m, s: m(IMG3), False),
    "Lambda": (lambda: ((jax.nn.relu,), {}), lambda m, s: m(X3), False),
    "Sequential": (
        lambda: (([eqx.nn.Linear(3, 4, key=K1), eqx.nn.Lambda(jax.nn.relu)],), {}),
        lambda m, s: m(X3),
        False,
    ),
    "MultiheadAttention": (lambda: ((2, 4), {"key": K1}), lambda m, s: m(SEQ, SEQ, SEQ), False),
    "PReLU": (lambda: ((), {}), lambda m, s: m(X3), False),
    "RotaryPositionalEmbedding": (lambda: ((4,), {}), lambda m, s: m(SEQ), False),
    "Shared": (
        lambda: (
            ((eqx.nn.Linear(3, 3, key=K1), eqx.nn.Linear(3, 3, key=K2)),),
            {"where": lambda p: p[1].weight, "get": lambda p: p[0].weight},
        ),
        lambda m, s: m()[1](X3),
        False,
    ),
    "BatchNorm": (
        lambda: ((4, "batch"), {"mode": "batch"}),
        lambda m, s: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            BATCH, s
        ),
        True,
    ),
    "SpectralNorm": (
        lambda: ((eqx.nn.Linear(3, 3, key=K1), "weight"), {"key": K2}),
        lambda m, s: m(X3, s),
        True,
    ),
}
# Not layers a user calls: a marker, and the abstract base of stateful layers.
NOT_CALLED = {"StateIndex", "StatefulLayer"}


def test_the_corpus_covers_every_eqx_nn_layer() -> None:
    classes = {
        name
        for name, c in vars(eqx.nn).items()
        if inspect.isclass(c) and issubclass(c, eqx.Module)
    }
    assert classes - NOT_CALLED - set(CORPUS) == set(), "add the new eqx.nn layers to CORPUS"


def subclasses(base: type) -> list[type]:
    class Plain(base):  # type: ignore[valid-type, misc]
        pass

    class Calling(base):  # type: ignore[valid-type, misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs)

    return [Plain, Calling]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_subclasses_convert_and_run_like_equinox(name: str) -> None:
    arguments, call, stateful = CORPUS[name]
    args, kwargs = arguments()
    wants, models, states = [], [], []
    for cls in subclasses(getattr(eqx.nn, name)):
        if stateful:
            layer, state = eqx.nn.make_with_state(cls)(*args, **kwargs)
            model, mstate = eqxst.mutable((layer, state))
            leaves, treedef = jax.tree_util.tree_flatten(state)
            wants.append(call(layer, jax.tree_util.tree_unflatten(treedef, leaves)))
            # Eagerly: the state lands in place, and equals Equinox's new state.
            out, _ = eqxst.in_place(call)(model, mstate)
            assert_close(out, wants[-1][0])
            assert_trees_close(eqxst.freeze(mstate), wants[-1][1], rtol=1e-5, atol=1e-6)
            model, mstate = eqxst.mutable((layer, state))  # from the start again, for jit
            wants[-1] = wants[-1][0]
        else:
            layer, mstate = cls(*args, **kwargs), None
            model = eqxst.mutable(layer)
            wants.append(call(layer, None))
            assert_close(call(model, None), wants[-1])
        assert isinstance(model, cls)
        models.append(model)
        states.append(mstate)

    @jax.jit  # one compilation for both subclasses
    def run(models: list, states: list) -> list:
        step = eqxst.in_place(call) if stateful else call
        outs = [step(m, s) for m, s in zip(models, states, strict=True)]
        return [o[0] for o in outs] if stateful else outs

    for got, want in zip(run(models, states), wants, strict=True):
        assert_close(got, want)


def assert_close(got: Any, want: Any) -> None:
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
