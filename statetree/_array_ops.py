"""Array behaviour for Variables: operators, conversions and read-only attributes.

A Variable stands in for its array in user code (``x @ self.kernel + self.bias``), so
every operator reads the current value and applies the array's own operator. Reads go
through ``self.value``; nothing here writes.

The operators are spelled out in the class body so that type checkers see them (``w *
2.0`` is an ``Array``). For type checkers only, the mixin also derives from
``jax.Array``: JAX's functions take ``jax.typing.ArrayLike``, a closed union with no
protocol for ``__jax_array__`` objects, so this is the one way ``jnp.sum(w)`` checks.
It describes what runs: JAX converts a Variable through ``__jax_array__``, and every
array method and property is forwarded to the current value (``__getattr__``). At run
time a Variable is *not* a ``jax.Array`` instance (``isinstance`` says so, and
statetree relies on it); only the static view differs.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

__all__ = ["ArrayBehaviour"]

if TYPE_CHECKING:
    _StaticBase = jax.Array
else:
    _StaticBase = object


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, ArrayBehaviour) else x


class ArrayBehaviour(_StaticBase):
    """Mixin: the subclass provides ``value`` (the current array); this gives it the
    array's operators and read-only attributes."""

    __slots__ = ()

    value: Any

    # Elementwise ``==`` makes Variables unhashable by default (and jax.Array says so);
    # identity is what the graph code needs, so keep object hashing.
    def __hash__(self) -> int:
        return object.__hash__(self)

    # ------------------------------------------------------------ arithmetic
    def __add__(self, other: Any) -> jax.Array:
        return self.value + _unwrap(other)

    def __radd__(self, other: Any) -> jax.Array:
        return _unwrap(other) + self.value

    def __sub__(self, other: Any) -> jax.Array:
        return self.value - _unwrap(other)

    def __rsub__(self, other: Any) -> jax.Array:
        return _unwrap(other) - self.value

    def __mul__(self, other: Any) -> jax.Array:
        return self.value * _unwrap(other)

    def __rmul__(self, other: Any) -> jax.Array:
        return _unwrap(other) * self.value

    def __truediv__(self, other: Any) -> jax.Array:
        return self.value / _unwrap(other)

    def __rtruediv__(self, other: Any) -> jax.Array:
        return _unwrap(other) / self.value

    def __floordiv__(self, other: Any) -> jax.Array:
        return self.value // _unwrap(other)

    def __rfloordiv__(self, other: Any) -> jax.Array:
        return _unwrap(other) // self.value

    def __mod__(self, other: Any) -> jax.Array:
        return self.value % _unwrap(other)

    def __rmod__(self, other: Any) -> jax.Array:
        return _unwrap(other) % self.value

    def __pow__(self, other: Any) -> jax.Array:
        return self.value ** _unwrap(other)

    def __rpow__(self, other: Any) -> jax.Array:
        return _unwrap(other) ** self.value

    def __matmul__(self, other: Any) -> jax.Array:
        return self.value @ _unwrap(other)

    def __rmatmul__(self, other: Any) -> jax.Array:
        return _unwrap(other) @ self.value

    def __and__(self, other: Any) -> jax.Array:
        return self.value & _unwrap(other)

    def __rand__(self, other: Any) -> jax.Array:
        return _unwrap(other) & self.value

    def __or__(self, other: Any) -> jax.Array:
        return self.value | _unwrap(other)

    def __ror__(self, other: Any) -> jax.Array:
        return _unwrap(other) | self.value

    def __xor__(self, other: Any) -> jax.Array:
        return self.value ^ _unwrap(other)

    def __rxor__(self, other: Any) -> jax.Array:
        return _unwrap(other) ^ self.value

    def __lshift__(self, other: Any) -> jax.Array:
        return self.value << _unwrap(other)

    def __rlshift__(self, other: Any) -> jax.Array:
        return _unwrap(other) << self.value

    def __rshift__(self, other: Any) -> jax.Array:
        return self.value >> _unwrap(other)

    def __rrshift__(self, other: Any) -> jax.Array:
        return _unwrap(other) >> self.value

    def __divmod__(self, other: Any) -> tuple[jax.Array, jax.Array]:
        return divmod(self.value, _unwrap(other))

    def __rdivmod__(self, other: Any) -> Any:  # a pair of arrays (JAX's stub says Array)
        return divmod(_unwrap(other), self.value)

    # ------------------------------------------------------------ comparisons
    def __lt__(self, other: Any) -> jax.Array:
        return self.value < _unwrap(other)

    def __le__(self, other: Any) -> jax.Array:
        return self.value <= _unwrap(other)

    def __eq__(self, other: Any) -> Any:  # elementwise, as arrays compare
        return self.value == _unwrap(other)

    def __ne__(self, other: Any) -> Any:
        return self.value != _unwrap(other)

    def __gt__(self, other: Any) -> jax.Array:
        return self.value > _unwrap(other)

    def __ge__(self, other: Any) -> jax.Array:
        return self.value >= _unwrap(other)

    # ------------------------------------------------------------ unary and conversions
    def __neg__(self) -> jax.Array:
        return -self.value

    def __pos__(self) -> jax.Array:
        return +self.value

    def __abs__(self) -> jax.Array:
        return abs(self.value)

    def __invert__(self) -> jax.Array:
        return ~self.value

    def __bool__(self) -> bool:
        return bool(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __complex__(self) -> complex:
        return complex(self.value)

    def __index__(self) -> int:
        return self.value.__index__()

    # ------------------------------------------------------------ protocols
    def __jax_array__(self) -> jax.Array:
        return self.value

    def __array__(
        self, dtype: Any = None, context: Any = None, copy: bool | None = None
    ) -> np.ndarray:
        out = np.asarray(self.value, dtype=dtype)
        return out.copy() if copy else out

    def __len__(self) -> int:
        shape = self.shape
        if not shape:
            raise TypeError("len() of unsized object: this Variable holds a scalar.")
        return shape[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value)

    def __round__(self, ndigits: int | None = None) -> Any:
        return round(self.value, ndigits)

    def __getattr__(self, name: str) -> Any:
        # Array methods and properties (`.T`, `.reshape`, `.sum`, `.at`, ...) come from
        # the current value. Private names are never forwarded: copy/pickle protocols
        # must see the Variable itself.
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(self.value, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}, and neither "
                f"has its array value."
            ) from None
