"""The default form of new Variables: ``st.use_mutable_arrays``.

The flag lives in a ``contextvars.ContextVar``, so each thread and each asyncio task sees
its own setting and a ``with`` block in one never leaks into another.
"""

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["use_mutable_arrays", "mutable_arrays_enabled"]

_MUTABLE_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "statetree_mutable_default", default=False
)

F = TypeVar("F", bound=Callable[..., Any])


def mutable_arrays_enabled() -> bool:
    """Whether a new ``Variable(value)`` (with ``mutable=None``) is created mutable."""
    return _MUTABLE_DEFAULT.get()


class use_mutable_arrays:
    """Set whether new Variables are mutable by default, for a block or a function.

    A ``Variable(value)`` created without ``mutable=`` is mutable (holds a ``jax.Ref``)
    when the flag is on and frozen when it is off. The default is off. The setting is held
    in a ``contextvars.ContextVar``: each thread and each asyncio task sees its own, and a
    ``with`` block in one never leaks into another.

    Args:
      flag: True for mutable Variables by default, False for frozen ones.

    Raises:
      TypeError: ``flag`` is not a ``bool``.

    Examples:
      As a context manager:

      >>> import jax.numpy as jnp, statetree as st
      >>> with st.use_mutable_arrays(True):
      ...     v = st.Variable(jnp.zeros(3))
      >>> v.mutable, st.Variable(jnp.zeros(3)).mutable
      (True, False)

      As a decorator, each call of the function runs with the flag set (for ``async def``
      functions, across their awaits; for generators, during each resume, with the
      caller's own setting back between them):

      >>> @st.use_mutable_arrays(True)
      ... def init():
      ...     return {"w": st.Param(jnp.ones(2))}
      >>> init()["w"].mutable
      True
    """

    __slots__ = ("_flag", "_tokens")

    def __init__(self, flag: bool) -> None:
        if not isinstance(flag, bool):
            raise TypeError(
                f"use_mutable_arrays(flag): flag must be True or False, got {flag!r} "
                f"of type {type(flag).__name__}."
            )
        self._flag = flag
        self._tokens: list[contextvars.Token[bool]] = []

    def __enter__(self) -> None:
        self._tokens.append(_MUTABLE_DEFAULT.set(self._flag))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _MUTABLE_DEFAULT.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        flag = self._flag
        if inspect.isasyncgenfunction(fn):
            return functools.wraps(fn)(_async_generator(fn, flag))  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            return functools.wraps(fn)(_generator(fn, flag))  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def coroutine(*args: Any, **kwargs: Any) -> Any:
                # The flag is held while the body runs, awaits included: set in this
                # task's context, it is not seen by other tasks meanwhile.
                with use_mutable_arrays(flag):
                    return await fn(*args, **kwargs)

            return coroutine  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # A fresh context manager per call: concurrent calls never share tokens.
            with use_mutable_arrays(flag):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"use_mutable_arrays({self._flag})"


# Generators run in pieces, each in the context of whoever resumes them: the flag is set
# around each resume (next/send/throw/close) and the caller's own setting is back between
# them. Otherwise the `with` would end as soon as the generator object was created. One
# object per kind of generator stands in for the wrapped one and forwards each resume;
# the protocol's other methods (`__next__`, `__iter__`, `__anext__`, `__aiter__`) come
# from the ABCs, which define them through these.
class _FlaggedGenerator(Generator[Any, Any, Any]):
    __slots__ = ("_flag", "_inner")

    def __init__(self, inner: Generator[Any, Any, Any], flag: bool) -> None:
        self._inner, self._flag = inner, flag

    def send(self, value: Any) -> Any:
        with use_mutable_arrays(self._flag):
            return self._inner.send(value)

    def throw(self, *exc: Any) -> Any:
        with use_mutable_arrays(self._flag):
            return self._inner.throw(*exc)

    def close(self) -> None:
        with use_mutable_arrays(self._flag):
            self._inner.close()

    def __del__(self) -> None:  # an abandoned generator's cleanup runs with the flag too
        self.close()


class _FlaggedAsyncGenerator(AsyncGenerator[Any, Any]):
    __slots__ = ("_flag", "_inner")

    def __init__(self, inner: AsyncGenerator[Any, Any], flag: bool) -> None:
        self._inner, self._flag = inner, flag

    async def asend(self, value: Any) -> Any:
        with use_mutable_arrays(self._flag):
            return await self._inner.asend(value)

    async def athrow(self, *exc: Any) -> Any:
        with use_mutable_arrays(self._flag):
            return await self._inner.athrow(*exc)

    async def aclose(self) -> None:
        with use_mutable_arrays(self._flag):
            await self._inner.aclose()


def _generator(fn: Callable[..., Any], flag: bool) -> Callable[..., Generator[Any, Any, Any]]:
    def generator(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return _FlaggedGenerator(fn(*args, **kwargs), flag)  # runs none of the body yet

    return generator


def _async_generator(
    fn: Callable[..., Any], flag: bool
) -> Callable[..., AsyncGenerator[Any, Any]]:
    def generator(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        return _FlaggedAsyncGenerator(fn(*args, **kwargs), flag)

    return generator


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
use_mutable_arrays.__module__ = "statetree"
