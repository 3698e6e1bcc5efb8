"""examples/flax_nnx/: each port trains step for step like the Flax NNX original."""

import pathlib
import sys
from collections.abc import Iterator
from types import ModuleType

import jax
import numpy as np
import pytest

import statetree as st

nnx = pytest.importorskip("flax.nnx")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flax_nnx"
STEPS = 3


@pytest.fixture(scope="module")
def port() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import dropout_batchnorm

        yield dropout_batchnorm
    finally:
        sys.path.remove(str(EXAMPLES))


def as_numbers(x: jax.Array) -> np.ndarray:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def test_dropout_batchnorm_trains_and_evaluates_like_nnx(port: ModuleType) -> None:
    step, model, evaluate = port.statetree_run()
    nnx_step, nnx_model, nnx_evaluate = port.nnx_run()
    losses = [float(step()) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, [float(nnx_step()) for _ in range(STEPS)], rtol=1e-6)
    assert len(set(losses)) == STEPS  # dropout drew a new mask every step
    # Eval mode: running statistics, no dropout, nothing written.
    before = st.unbox(st.state(model))
    np.testing.assert_allclose(evaluate(), nnx_evaluate(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(evaluate(), evaluate())
    after = st.unbox(st.state(model))
    for path, value in before.items():
        np.testing.assert_array_equal(as_numbers(value), as_numbers(after[path]))
    # Every weight, statistic and the dropout stream (key and count) as NNX has them.
    theirs = {path: v[...] for path, v in nnx.to_flat_state(nnx.state(nnx_model))}
    mine = st.state(model)
    assert isinstance(mine, st.State) and set(mine.paths()) == set(theirs)
    assert int(mine[("dropout", "rngs", "count")][...]) == STEPS
    for path, value in mine.items():
        np.testing.assert_allclose(
            as_numbers(value[...]), as_numbers(theirs[path]), rtol=1e-5, atol=1e-7
        )
    assert type(mine[("bn", "mean")]) is st.BatchStat


def test_main_trains(port: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    losses = port.main(steps=2)
    assert len(losses) == 2 and f"{losses[0]:.4f}" in capsys.readouterr().out
