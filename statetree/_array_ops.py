"""Array behaviour for Variables: operators, conversions and read-only attributes.

A Variable stands in for its array in user code (``x @ self.kernel + self.bias``), so
every operator reads the current value and applies the array's own operator. Reads go
through ``self.value``; nothing here writes.
"""

import operator
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["ArrayBehaviour"]


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, ArrayBehaviour) else x


def _binary(op: Callable[[Any, Any], Any], name: str) -> Callable[[Any, Any], Any]:
    def method(self: "ArrayBehaviour", other: Any) -> Any:
        return op(self.value, _unwrap(other))

    method.__name__ = name
    return method


def _reflected(op: Callable[[Any, Any], Any], name: str) -> Callable[[Any, Any], Any]:
    def method(self: "ArrayBehaviour", other: Any) -> Any:
        return op(_unwrap(other), self.value)

    method.__name__ = name
    return method


def _unary(op: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def method(self: "ArrayBehaviour") -> Any:
        return op(self.value)

    method.__name__ = name
    return method


_BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "divmod": divmod,
}
_COMPARISONS = {
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
}
_UNARY = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "index": operator.index,
}


class ArrayBehaviour:
    """Mixin: the subclass provides ``value`` (the current array); this gives it the
    array's operators and read-only attributes."""

    __slots__ = ()

    value: Any

    # Elementwise ``==`` makes Variables unhashable by default; identity is what the
    # graph code needs, so keep object hashing.
    __hash__ = object.__hash__

    def __jax_array__(self) -> Any:
        return self.value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self.value, dtype=dtype)
        return out.copy() if copy else out

    def __len__(self) -> int:
        shape = self.shape  # type: ignore[attr-defined]
        if not shape:
            raise TypeError("len() of unsized object: this Variable holds a scalar.")
        return shape[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value)

    def __round__(self, ndigits: int | None = None) -> Any:
        return round(self.value, ndigits)  # type: ignore[call-overload]

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


for _name, _op in _BINARY.items():
    setattr(ArrayBehaviour, f"__{_name}__", _binary(_op, f"__{_name}__"))
    setattr(ArrayBehaviour, f"__r{_name}__", _reflected(_op, f"__r{_name}__"))
for _name, _op in _COMPARISONS.items():
    setattr(ArrayBehaviour, f"__{_name}__", _binary(_op, f"__{_name}__"))
for _name, _op in _UNARY.items():
    setattr(ArrayBehaviour, f"__{_name}__", _unary(_op, f"__{_name}__"))
del _name, _op
