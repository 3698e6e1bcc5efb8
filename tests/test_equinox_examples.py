"""examples/equinox/: each script trains (or decodes) step for step like the
pure-Equinox version of the same script, and runs on its own."""

import importlib
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "equinox"
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def example(name: str) -> ModuleType:
    return importlib.import_module(name)


def arrays(tree: object) -> list[np.ndarray]:
    return [np.asarray(x) for x in jtu.tree_leaves(eqx.filter(tree, eqx.is_array))]


def assert_close(a: object, b: object) -> None:
    la, lb = arrays(a), arrays(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.dtype == bool:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "packed"),
    [("stateful", True), ("mnist_cnn", False), ("train_rnn", True)],
)
def test_training_matches_pure_equinox_step_for_step(name: str, packed: bool) -> None:
    module = example(name)
    step, result = module.statetree_step(packed=packed)
    eqx_step, eqx_result = module.equinox_step()
    losses = [float(step()) for _ in range(STEPS)]
    want = [float(eqx_step()) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert losses[-1] < losses[0]
    assert_close(result(), eqx_result())  # parameters (and batch statistics, state)


def test_benchmark_baseline_trains_like_equinox() -> None:
    # benchmarks/bench_equinox.py times a functional jax.jit step with donation beside
    # the example's steps: it must compute the same thing.
    sys.path.insert(0, str(EXAMPLES.parents[1]))
    try:
        from benchmarks import bench_equinox
    finally:
        sys.path.remove(str(EXAMPLES.parents[1]))
    module = example("stateful")
    donated = bench_equinox._donated_training(module, stateful=True)
    eqx_step, _ = module.equinox_step()
    got = [float(donated()) for _ in range(3)]
    want = [float(eqx_step()) for _ in range(3)]
    # Compiled differently, the two agree to float rounding, which Adam's first steps
    # (update ~ lr * sign(gradient)) amplify where a gradient is near zero: 1e-4 here.
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert got[0] == pytest.approx(want[0], rel=1e-6)  # one forward pass: rounding only


def test_kv_decoder_generates_and_caches_like_pure_equinox() -> None:
    kv = example("kv_decoder")
    model, state = kv.statetree_model(packed=True)
    tokens = kv.generate(model, state, jnp.int32(3))
    plain_model, plain_state = kv.build()
    want_tokens, want_state = kv.equinox_generate(plain_model, plain_state, jnp.int32(3))
    np.testing.assert_array_equal(tokens, want_tokens)
    assert len(set(np.asarray(tokens).tolist())) > 1  # it generated something
    assert_close(kv.eqxst.freeze(state), want_state)  # the cache was written in place


def test_kv_decoder_packed_step_decodes_like_pure_equinox() -> None:
    # The converted modules' calls check for hollow Variables; a packed one's Variables
    # cannot be flattened alone inside jax.jit, so that check must not flatten them.
    kv = example("kv_decoder")
    step, cache = kv.statetree_step(packed=True)
    eqx_step, eqx_cache = kv.equinox_step()
    for _ in range(2):
        np.testing.assert_allclose(step(), eqx_step(), rtol=1e-5, atol=1e-6)
    assert_close(cache(), eqx_cache())


@pytest.mark.parametrize("name", ["stateful", "mnist_cnn", "train_rnn"])
def test_main_trains(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # main() runs the compiled step the test above used: no new compilation.
    losses = example(name).main(steps=2)
    assert len(losses) == 2 and f"{losses[0]:.4f}" in capsys.readouterr().out


def test_example_runs_on_its_own() -> None:
    # One script as a user runs it, from its own folder's parent (a fresh process).
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "kv_decoder.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("generated: [3, ")


def test_dcgan_discriminator_called_twice_in_one_loss_trains_like_equinox() -> None:
    # Equinox's BatchNorm ("ema") hands the first call's statistics, gradient included,
    # to the second call of the discriminator in one loss; the converted state is written
    # in place, and the read after the write keeps that gradient. Measured: bit for bit
    # (both programs do the same arithmetic); without it the losses part at step 2.
    gan = example("dcgan")
    step, result = gan.statetree_step()
    eqx_step, eqx_result = gan.equinox_step()
    for _ in range(STEPS):
        np.testing.assert_allclose(np.asarray(step()), np.asarray(eqx_step()), rtol=1e-6)
    assert_close(result(), eqx_result())  # both networks, both states


def test_score_based_diffusion_mixer_trains_like_equinox() -> None:
    mixer = example("score_mixer")
    step, result = mixer.statetree_step()
    eqx_step, eqx_result = mixer.equinox_step()
    losses = [float(step()) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, [float(eqx_step()) for _ in range(STEPS)], rtol=1e-6)
    assert_close(result(), eqx_result())


def test_tiny_bert_trains_with_dropout_and_evaluates_in_inference_mode() -> None:
    bert = example("tiny_bert")
    step, result, logits = bert.statetree_step()
    eqx_step, eqx_result, eqx_logits = bert.equinox_step()
    losses = [float(step()) for _ in range(STEPS)]
    np.testing.assert_allclose(losses, [float(eqx_step()) for _ in range(STEPS)], rtol=1e-6)
    assert_close(result(), eqx_result())
    held_out = np.asarray(logits())
    np.testing.assert_allclose(held_out, np.asarray(eqx_logits()), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(held_out, np.asarray(logits()))  # no dropout in eval
