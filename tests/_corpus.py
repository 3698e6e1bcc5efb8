"""A corpus of pytree kinds for round-trip tests (see conftest.py for the fixture)."""

import dataclasses
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import statetree as st

Point = namedtuple("Point", ["x", "y"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Dense:
    kernel: Any
    bias: Any
    activation: str = dataclasses.field(default="relu", metadata={"static": True})


def _corpus() -> dict[str, Callable[[], Any]]:
    """Named factories, each a fresh pytree of arrays and non-array leaves."""
    return {
        "array": lambda: jnp.arange(3.0),
        "dict": lambda: {"a": jnp.ones(2), "b": {"c": jnp.zeros((2, 2))}},
        "list": lambda: [jnp.ones(1), [jnp.zeros(2), jnp.arange(3)]],
        "tuple": lambda: (jnp.ones(()), (jnp.zeros(2),)),
        "namedtuple": lambda: Point(jnp.ones(2), jnp.zeros(2)),
        "dataclass": lambda: Dense(jnp.ones((2, 3)), jnp.zeros(3)),
        "none_and_statics": lambda: {
            "w": jnp.ones(2),
            "none": None,
            "n": 3,
            "name": "layer",
            "fn": jax.nn.relu,
        },
        "numpy": lambda: {"np": np.arange(4, dtype=np.float32), "scalar": np.float32(2.0)},
        "dtypes": lambda: {
            "bf16": jnp.ones(2, jnp.bfloat16),
            "i8": jnp.arange(3, dtype=jnp.int8),
            "u32": jnp.arange(2, dtype=jnp.uint32),
            "bool": jnp.array([True, False]),
        },
        "empty": lambda: {"a": [], "b": {}, "c": ()},
        "variables": lambda: {"p": st.Param(jnp.ones(2)), "s": st.BatchStat(jnp.zeros(()))},
        "nested_mixture": lambda: [
            {"layer": Dense(jnp.ones((1, 2)), jnp.zeros(2)), "scale": 1.0},
            Point(jnp.zeros(1), (jnp.ones(1), None)),
        ],
    }


CORPUS = _corpus()


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same structure, same leaves (arrays compared exactly, dtypes included)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"structures differ:\n{ta}\n{tb}"
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            assert jnp.asarray(x).dtype == jnp.asarray(y).dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            assert x == y


def layer_model() -> dict:
    """A mutable model of each kind of leaf: Params, BatchStats, a bare array (which
    becomes a Variable) and a static string (tests of split, merge and filters)."""
    return st.mutable(
        {
            "linear": {"kernel": st.Param(jnp.ones((2, 3))), "bias": st.Param(jnp.zeros(3))},
            "bn": {"mean": st.BatchStat(jnp.zeros(3)), "var": st.BatchStat(jnp.ones(3))},
            "count": jnp.array(0),
            "act": "gelu",
        }
    )


def two_layers() -> dict:
    """Two layers of a frozen Param and a mutable BatchStat, and a bare step counter
    (tests of State and of how it prints)."""
    return {
        "layers": [
            {"w": st.Param(jnp.ones((2, 2))), "n": st.BatchStat(jnp.zeros(2), mutable=True)},
            {"w": st.Param(jnp.ones((2, 2))), "n": st.BatchStat(jnp.zeros(2), mutable=True)},
        ],
        "step": jnp.array(0),
    }
