"""statetree._recall: inside one trace, a read after a write gives the value written,
with its gradient, as functional code that hands the value on would; the Ref still
receives the final value. Each case is checked against a functional reference."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import statetree as st

W = jnp.array([1.0, -2.0, 0.5])
X1 = jnp.arange(6.0).reshape(2, 3) / 4
X2 = jnp.ones((2, 3))


def reference(w: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two calls of a layer with a running mean, the state handed from one to the next."""
    h1 = X1 * w
    m = 0.5 * m + 0.5 * h1.mean(0)
    h2 = (X2 - m) * w
    m = 0.5 * m + 0.5 * h2.mean(0)
    return jnp.sum(h1**2) + jnp.sum(h2**2) + jnp.sum(m**2), m


def in_place(mean: st.Variable) -> Callable[[jax.Array], jax.Array]:
    def loss(w: jax.Array) -> jax.Array:
        h1 = X1 * w
        mean[...] = 0.5 * mean[...] + 0.5 * h1.mean(0)
        h2 = (X2 - mean[...]) * w  # read after write: the value written, with its gradient
        mean.value = 0.5 * mean + 0.5 * h2.mean(0)
        return jnp.sum(h1**2) + jnp.sum(h2**2) + jnp.sum(mean.value**2)

    return loss


def want() -> tuple[np.ndarray, np.ndarray]:
    grad, m = jax.grad(reference, has_aux=True)(W, jnp.zeros(3))
    return np.asarray(grad), np.asarray(m)


@pytest.mark.parametrize("kind", [st.BatchStat, st.Cache, st.OptState])
def test_eager_grad_reads_the_value_written_with_its_gradient(kind: type[st.Variable]) -> None:
    mean = kind(jnp.zeros(3), mutable=True)
    grad = jax.grad(in_place(mean))(W)
    g, m = want()
    np.testing.assert_array_equal(grad, g)
    np.testing.assert_array_equal(mean[...], m)  # the Ref holds the final value


def test_grad_inside_jit_with_the_variable_as_argument() -> None:
    @jax.jit
    def step(mean: st.BatchStat, w: jax.Array) -> jax.Array:
        return jax.grad(in_place(mean))(w)

    mean = st.BatchStat(jnp.zeros(3), mutable=True)
    g, m = want()
    np.testing.assert_array_equal(step(mean, W), g)
    np.testing.assert_array_equal(mean[...], m)
    # A second step reads the first one's final value from the Ref, as Equinox's state.
    g2, m2 = jax.grad(reference, has_aux=True)(W, jnp.asarray(m))
    np.testing.assert_allclose(step(mean, W), g2, rtol=1e-6)
    np.testing.assert_allclose(mean[...], m2, rtol=1e-6)


def test_without_recall_the_gradient_would_differ() -> None:
    # The check above can fail: the gradient through the handed-on value is not zero.
    def cut(w: jax.Array, m: jax.Array) -> jax.Array:
        h1 = X1 * w
        m = jax.lax.stop_gradient(0.5 * m + 0.5 * h1.mean(0))
        h2 = (X2 - m) * w
        m = 0.5 * m + 0.5 * h2.mean(0)
        return jnp.sum(h1**2) + jnp.sum(h2**2) + jnp.sum(m**2)

    assert not np.allclose(jax.grad(cut)(W, jnp.zeros(3)), want()[0])


def test_indexed_writes_and_update_and_unbox() -> None:
    cache = st.Cache(jnp.zeros((2, 3)), mutable=True)
    tree = {"stat": st.BatchStat(jnp.zeros(3), mutable=True)}

    def loss(w: jax.Array) -> jax.Array:
        cache[0] = w * 2  # an indexed write: row 0 keeps its gradient
        cache[1, 1:] = w[:2] ** 2
        st.update(tree, st.State({("stat",): cache[0] + 1}))  # read, then st.update
        plain = st.unbox(tree)  # and read back through a tree read
        return jnp.sum(cache[...] ** 2) + jnp.sum(plain["stat"] * w)

    def functional(w: jax.Array) -> jax.Array:
        c = jnp.zeros((2, 3)).at[0].set(w * 2).at[1, 1:].set(w[:2] ** 2)
        return jnp.sum(c**2) + jnp.sum((c[0] + 1) * w)

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(W), jax.grad(functional)(W), rtol=1e-6)
    np.testing.assert_allclose(tree["stat"][...], W * 2 + 1)
    np.testing.assert_allclose(cache[1], [0.0, 1.0, 4.0])


def test_scan_body_reads_its_own_writes() -> None:
    count = st.OptState(jnp.zeros(3), mutable=True)

    def loss(w: jax.Array) -> jax.Array:
        def body(acc: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
            count[...] = x * w  # written and read in one scan body
            return acc + jnp.sum(count[...] ** 2), None

        return jax.lax.scan(body, jnp.float32(0), X1)[0]

    functional = lambda w: sum(jnp.sum((x * w) ** 2) for x in X1)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(W), jax.grad(functional)(W), rtol=1e-6)
    np.testing.assert_allclose(count[...], X1[-1] * W)  # the last iteration's value


def test_remat_writes_once_and_reads_the_value_written() -> None:
    calls = st.OptState(jnp.zeros((), jnp.int32), mutable=True)
    mean = st.BatchStat(jnp.zeros(3), mutable=True)

    @jax.checkpoint
    def block(w: jax.Array) -> jax.Array:
        calls[...] += 1  # state: once, though remat recomputes the forward pass
        return in_place(mean)(w)

    grad = jax.jit(jax.grad(block))(W)
    g, m = want()
    np.testing.assert_allclose(grad, g, rtol=1e-6)
    np.testing.assert_allclose(mean[...], m, rtol=1e-6)
    assert int(calls[...]) == 1


def test_vmap_over_mapped_variables() -> None:
    means = st.BatchStat(jnp.zeros((4, 3)), mutable=True)  # one row per batch element
    ws = W * jnp.arange(1.0, 5.0)[:, None]

    @jax.jit
    def step(means: st.BatchStat, ws: jax.Array) -> jax.Array:
        return jax.vmap(lambda m, w: jax.grad(in_place(m))(w))(means, ws)

    grads = step(means, ws)
    g, m = jax.vmap(lambda w: jax.grad(reference, has_aux=True)(w, jnp.zeros(3)))(ws)
    np.testing.assert_allclose(grads, g, rtol=1e-6)
    np.testing.assert_allclose(means[...], m, rtol=1e-6)


def test_differentiable_kind_reads_its_write_in_jit() -> None:
    v = st.Variable(jnp.zeros(3), mutable=True)

    @jax.jit
    def f(v: st.Variable, x: jax.Array) -> jax.Array:
        v[...] = x * 3
        v[1] = 7.0
        return v[...] + 1

    np.testing.assert_array_equal(f(v, jnp.ones(3)), [4.0, 8.0, 4.0])
    np.testing.assert_array_equal(v[...], [3.0, 7.0, 3.0])


def test_a_nested_cached_jit_that_writes_is_seen() -> None:
    # The inner jit is traced once, then replayed from its cache without Python: what
    # the outer trace remembers of `v` must not hide the inner writes.
    @jax.jit
    def bump(v: st.Variable) -> None:
        v[...] += 1

    @jax.jit
    def outer(v: st.Variable) -> jax.Array:
        v[...] = jnp.full(3, 10.0)
        bump(v)
        first = v[...]
        v[...] = first * 2
        bump(v)  # the cached trace this time
        return v[...]

    v = st.Variable(jnp.zeros(3), mutable=True)
    np.testing.assert_array_equal(outer(v), [23.0, 23.0, 23.0])
    np.testing.assert_array_equal(v[...], [23.0, 23.0, 23.0])


def test_a_refused_write_is_not_remembered() -> None:
    # A plan refused as a whole writes nothing, and later reads do not see it either.
    tree = {"a": st.BatchStat(jnp.zeros(2), mutable=True), "b": st.Param(jnp.zeros(2))}

    @jax.jit
    def f(tree: dict[str, st.Variable]) -> jax.Array:
        with pytest.raises(st.FrozenVariableError, match="frozen Param"):
            st.update(tree, st.State({("a",): jnp.ones(2), ("b",): jnp.ones(2)}))
        return tree["a"][...]

    np.testing.assert_array_equal(f(tree), [0.0, 0.0])
    np.testing.assert_array_equal(tree["a"][...], [0.0, 0.0])


def test_a_closed_over_variable_written_by_a_cached_nested_transform() -> None:
    # Closed over, the Variable is never flattened: a cond replays its cached branch
    # without Python. The value read is still the Ref's (the write is not hidden).
    v = st.BatchStat(jnp.zeros(3), mutable=True)

    def bump() -> None:
        v[...] += 1

    @jax.jit
    def outer(x: jax.Array) -> jax.Array:
        v[...] = jnp.full(3, 10.0) * x
        jax.lax.cond(x > 0, bump, lambda: None)
        v[...] = v[...] * 2
        jax.lax.cond(x > 0, bump, lambda: None)  # the cached branches this time
        return v[...]

    np.testing.assert_array_equal(outer(jnp.float32(1)), [23.0, 23.0, 23.0])
    np.testing.assert_array_equal(v[...], [23.0, 23.0, 23.0])


def test_nothing_is_kept_past_its_trace_under_checking_leaks() -> None:
    # JAX reports a tracer alive after its trace as a leak: under jax.checking_leaks the
    # record is off (a read after a write then has the Ref's value, no gradient).
    mean = st.BatchStat(jnp.zeros(3), mutable=True)
    model = {"w": st.Param(jnp.ones(3), mutable=True)}
    optimizer = st.Optimizer(model, optax.adam(1e-2))

    @jax.jit
    def step(model: dict[str, st.Param], optimizer: st.Optimizer, mean: st.BatchStat) -> None:
        grads = jax.grad(in_place(mean))(model["w"][...])
        optimizer.update(model, {"w": grads})

    with jax.checking_leaks():
        step(model, optimizer, mean)
    assert int(optimizer.step[...]) == 1
    h1 = X1 * 1.0
    m1 = 0.5 * h1.mean(0)
    np.testing.assert_allclose(mean[...], 0.5 * m1 + 0.5 * ((X2 - m1) * 1.0).mean(0))
