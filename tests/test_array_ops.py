"""Array behaviour of Variables (statetree._array_ops): operators, conversions, forwarded
array attributes, and what JAX refuses."""

import jax.numpy as jnp
import numpy as np
import pytest

import statetree as st


def test_operators_and_jnp_functions() -> None:
    w = st.Param(jnp.array([[1.0, 2.0], [3.0, 4.0]]), mutable=True)
    b = st.Param(jnp.array([1.0, -1.0]))
    x = jnp.ones((1, 2))
    np.testing.assert_allclose(x @ w + b, [[5.0, 5.0]])
    np.testing.assert_allclose(w @ w, np.array([[7, 10], [15, 22]]))  # operators read twice
    np.testing.assert_allclose(-b, [-1.0, 1.0])
    np.testing.assert_allclose(2**b, [2.0, 0.5])
    np.testing.assert_array_equal(b < 0, [False, True])
    np.testing.assert_array_equal(b == b, [True, True])
    np.testing.assert_allclose(jnp.sin(b), np.sin([1.0, -1.0]), rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(w), 10.0)
    np.testing.assert_allclose(np.asarray(w), [[1, 2], [3, 4]])
    assert (w.shape, w.dtype, w.ndim, w.size, len(w)) == ((2, 2), jnp.float32, 2, 4, 2)
    assert w.sharding is not None
    rows = list(w)
    np.testing.assert_array_equal(rows[1], [3, 4])
    np.testing.assert_array_equal(w.T, [[1, 3], [2, 4]])  # array attributes forwarded
    assert float(st.Variable(jnp.array(2.5))) == 2.5
    assert int(st.Variable(jnp.array(3))) == 3


def test_variables_stay_hashable_despite_elementwise_eq() -> None:
    v = st.Variable(jnp.zeros(2))
    assert {v: 1}[v] == 1


def test_jnp_call_with_one_mutable_variable_twice_is_a_jax_limit() -> None:
    # jnp functions run under an internal jit, which refuses one Ref passed twice.
    v = st.Variable(jnp.ones(2), mutable=True)
    with pytest.raises(ValueError, match="only one reference to a mutable array"):
        jnp.dot(v, v)
    assert float(v @ v) == 2.0  # operators read the value first: fine


def test_len_of_scalar_raises() -> None:
    with pytest.raises(TypeError, match="unsized"):
        len(st.Variable(jnp.array(1.0)))


def test_missing_attribute_error() -> None:
    v = st.Variable(jnp.zeros(2))
    with pytest.raises(AttributeError, match="neither has its array value"):
        v.no_such_thing
    with pytest.raises(AttributeError, match="_private"):
        v._private
