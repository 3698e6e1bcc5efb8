"""use_mutable_arrays: context manager, decorator, isolation across threads and tasks."""

import asyncio
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Any

import jax.numpy as jnp
import pytest
from typeguard import suppress_type_checks

import statetree as st


def new_is_mutable() -> bool:
    return st.Variable(jnp.zeros(())).mutable


def test_context_manager_nests_and_restores() -> None:
    assert not new_is_mutable()
    with st.use_mutable_arrays(True):
        assert new_is_mutable()
        with st.use_mutable_arrays(False):
            assert not new_is_mutable()
        assert new_is_mutable()
    assert not new_is_mutable()


def test_restored_after_an_exception() -> None:
    with pytest.raises(RuntimeError), st.use_mutable_arrays(True):
        raise RuntimeError("boom")
    assert not new_is_mutable()


def test_decorator_sets_the_flag_per_call() -> None:
    @st.use_mutable_arrays(True)
    def make() -> st.Variable:
        return st.Variable(jnp.zeros(()))

    assert make().mutable and make().mutable
    assert not new_is_mutable()
    assert make.__name__ == "make"


def test_threads_do_not_leak() -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, bool] = {}

    def worker(name: str, flag: bool) -> None:
        with st.use_mutable_arrays(flag):
            barrier.wait()  # both threads are inside their blocks at once
            seen[name] = new_is_mutable()
            barrier.wait()

    threads = [
        threading.Thread(target=worker, args=("on", True)),
        threading.Thread(target=worker, args=("off", False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"on": True, "off": False}
    assert not new_is_mutable()


def test_asyncio_tasks_do_not_leak() -> None:
    async def task(flag: bool, ready: asyncio.Event, go: asyncio.Event) -> bool:
        with st.use_mutable_arrays(flag):
            ready.set()
            await go.wait()  # the other task runs its block meanwhile
            return new_is_mutable()

    async def main() -> list[bool]:
        go = asyncio.Event()
        ready = [asyncio.Event(), asyncio.Event()]
        tasks = [
            asyncio.create_task(task(f, r, go)) for f, r in zip((True, False), ready, strict=False)
        ]
        for r in ready:
            await r.wait()
        go.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [True, False]


def test_flag_must_be_a_bool() -> None:
    # Users without typeguard get statetree's own check.
    with suppress_type_checks(), pytest.raises(TypeError, match=r"must be True or False, got 1"):
        st.use_mutable_arrays(1)  # type: ignore[arg-type]


def test_repr() -> None:
    assert repr(st.use_mutable_arrays(True)) == "use_mutable_arrays(True)"


def test_decorated_coroutine_holds_the_flag_across_awaits() -> None:
    @st.use_mutable_arrays(True)
    async def on(ready: asyncio.Event, go: asyncio.Event) -> tuple[bool, bool]:
        before = new_is_mutable()
        ready.set()
        await go.wait()  # the undecorated task runs meanwhile
        return before, new_is_mutable()

    async def off(ready: asyncio.Event, go: asyncio.Event) -> bool:
        await ready.wait()
        seen = new_is_mutable()
        go.set()
        return seen

    async def main() -> list[Any]:
        ready, go = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(on(ready, go), off(ready, go)))

    assert asyncio.iscoroutinefunction(on) and on.__name__ == "on"
    assert asyncio.run(main()) == [(True, True), False]
    assert not new_is_mutable()


def test_decorated_generator_sets_the_flag_around_each_resume() -> None:
    @st.use_mutable_arrays(True)
    def gen() -> Generator[bool, Any, str]:
        got = yield new_is_mutable()
        assert got == "sent"
        try:
            yield new_is_mutable()
        except KeyError:
            yield new_is_mutable()
        return "done"

    it = gen()
    assert next(it) is True and not new_is_mutable()  # the caller's setting between
    with st.use_mutable_arrays(False):
        assert it.send("sent") is True and not new_is_mutable()
    assert it.throw(KeyError("k")) is True and not new_is_mutable()
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value == "done" and not new_is_mutable()
    assert gen.__name__ == "gen"


def test_decorated_generator_close_and_errors() -> None:
    seen = []

    @st.use_mutable_arrays(True)
    def gen() -> Generator[int, None, None]:
        try:
            yield 1
            raise ValueError("inside the generator")
        finally:
            seen.append(new_is_mutable())

    it = gen()
    next(it)
    it.close()  # the generator's cleanup runs with the flag set
    assert seen == [True] and not new_is_mutable()
    it = gen()
    next(it)
    with pytest.raises(ValueError, match="inside the generator"):
        next(it)
    assert seen == [True, True] and not new_is_mutable()


def test_decorated_async_generator_sets_the_flag_around_each_resume() -> None:
    @st.use_mutable_arrays(True)
    async def agen() -> AsyncGenerator[bool, None]:
        yield new_is_mutable()
        await asyncio.sleep(0)
        yield new_is_mutable()

    async def main() -> list[tuple[bool, bool]]:
        return [(item, new_is_mutable()) async for item in agen()]

    assert asyncio.run(main()) == [(True, False), (True, False)]
