"""The steps where the processes of a ``jax.distributed`` job meet during a checkpoint,
and what happens when one of them never arrives.

A checkpoint of a multi-process job is written by all processes together: they agree
on one working directory (``same_token``), add up their shares of each digest
(``sum_across``), and wait for each other before process 0 (``is_primary``) commits
(``barrier``). In a one-process program each of these is free.

All three are one primitive, ``_meet``: each process posts its payload under a key of
the job's coordination service (the key-value store ``jax.distributed`` runs) and
waits, with a deadline, for every other process's key. So a process that died (or
hangs) is *named*: its key is the one missing when the deadline passes. JAX's own
collectives (gloo, NCCL) would instead fail with a transport error that names no
process, or wait for the heartbeat to give up (100 s by default).

Every coordinated statetree call runs inside ``coordinated(call, timeout)``: calls are
numbered (every process makes the same calls in the same order), and the keys of one
call live under ``statetree/ckpt/<number>/``. When anything raises inside the call (a
collective inside orbax that lost its peer, a file error), the process posts a
``failed`` key and waits up to ``timeout`` for every other process to post one too:
the processes that do are alive, and those that do not are the missing ones, named by
``PeerError``. A process waiting at a meeting point that sees another's ``failed`` key
stops waiting at once.
"""

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _jax
from ._failures import CheckpointError, PeerError

__all__ = [
    "PEER_TIMEOUT",
    "coordinated",
    "is_primary",
    "barrier",
    "same_token",
    "sum_across",
    "check_timeout",
]

# Seconds a coordinated call waits for a missing process at one point, by default. A dead
# peer is named within about 1-3.5 times this (orbax's own barriers, then the check of
# who is alive): within 60 s.
PEER_TIMEOUT = 15.0
_KEEP = 8  # calls whose keys stay in the key-value store
_POLL_MS = 100  # one blocking read of the key-value store, between checks for failures


def _client() -> Any:
    """The job's coordination-service client (None outside ``jax.distributed``)."""
    return _jax.coordination_client()


def _count() -> int:
    import jax

    return jax.process_count()


def _me() -> int:
    import jax

    return jax.process_index()


def check_timeout(where: str, timeout: float) -> float:
    """``timeout`` as a float, or a ValueError naming ``where``."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(
            f"{where}: peer_timeout={timeout!r} must be a positive number of seconds: how "
            "long a call waits for another process of a jax.distributed job before it "
            f"raises st.PeerError naming it (default {PEER_TIMEOUT:.0f})."
        )
    return float(timeout)


class _Call:
    """One coordinated call: its name, number, timeout and next meeting point."""

    def __init__(self, name: str, number: int, timeout: float, client: Any) -> None:
        self.name, self.number, self.timeout, self.client = name, number, timeout, client
        self.prefix = f"statetree/ckpt/{number}/"
        self.points = 0

    def key(self, point: str, process: int) -> str:
        return f"{self.prefix}{point}/{process}"

    def failures(self) -> dict[int, str]:
        found = self.client.key_value_dir_get(self.prefix + "failed/")
        return {int(k.rsplit("/", 1)[1]): v for k, v in found}

    def wait_for(self, point: str, until: float, *, failed_ok: bool) -> dict[int, bytes]:
        """Every process's payload at ``point``; raises PeerError naming the processes
        missing at ``until``, or the first that failed (unless ``failed_ok``)."""
        got: dict[int, bytes] = {}
        n = _count()
        while True:
            for p in range(n):
                if p in got:
                    continue
                try:
                    got[p] = self.client.blocking_key_value_get_bytes(self.key(point, p), _POLL_MS)
                except Exception:  # not there yet (a timeout of this one read)
                    break
            if len(got) == n:
                return got
            if not failed_ok and (failed := self.failures()):
                who, why = min(failed.items())
                raise _PeerFailed(self.name, who, why)
            if time.monotonic() > until:
                missing = [p for p in range(n) if p not in got]
                raise PeerError(self.name, missing, self.timeout, "never reached " + point)


class _PeerFailed(CheckpointError):
    """Another process raised inside the same coordinated call."""

    def __init__(self, call: str, process: int, why: str) -> None:
        self.process = process
        super().__init__(
            f"{call}: process {process} of this jax.distributed job failed during the call "
            f"({why}), so this process stopped too; nothing was committed or restored by "
            f"this call. See process {process}'s error for the cause and its fix."
        )


_state = threading.local()
_numbers = iter(range(1, 1 << 62))


@contextlib.contextmanager
def coordinated(name: str, timeout: float) -> Iterator[None]:
    """Run a statetree call that meets other processes (see the module docstring)."""
    client = _client() if _count() > 1 else None
    if client is None or getattr(_state, "call", None) is not None:
        yield
        return
    call = _Call(name, next(_numbers), timeout, client)
    _state.call = call
    if is_primary() and call.number > _KEEP:
        # Calls meet (a collective inside orbax, or a point here) before they return, so
        # every process is long past the call _KEEP calls back: drop its keys.
        with contextlib.suppress(Exception):
            client.key_value_delete(f"statetree/ckpt/{call.number - _KEEP}/")
    try:
        yield
    except PeerError:
        raise  # the missing processes are known already
    except BaseException as e:
        reason = _reason(e)
        client.key_value_set(call.key("failed", _me()), reason)
        # The processes still alive fail too and post theirs; those that never do are gone.
        try:
            call.wait_for("failed", time.monotonic() + timeout, failed_ok=True)
        except PeerError as lost:
            raise PeerError(name, lost.missing, timeout, reason) from e
        raise
    finally:
        _state.call = None


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause of ``error`` (an orbax read that failed
    because its peer vanished is reported as what it is, not as a damaged file)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def _meet(point: str, payload: bytes) -> dict[int, bytes]:
    call: _Call = _state.call
    call.points += 1
    point = f"{call.points}-{point}"
    call.client.key_value_set_bytes(call.key(point, _me()), payload)
    return call.wait_for(point, time.monotonic() + call.timeout, failed_ok=False)


def _collective() -> bool:
    """Whether meeting points go through JAX's collectives (a job without a
    coordination client, or a call outside ``coordinated``)."""
    return _count() > 1 and getattr(_state, "call", None) is None


def is_primary() -> bool:
    """Whether this process writes the files every process shares (process 0)."""
    return _me() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (nothing to wait for in one process)."""
    if _collective():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
    elif _count() > 1:
        _meet(name, b"")


def same_token() -> str:
    """A random token, the same on every process (process 0's)."""
    token = np.random.default_rng().bytes(8)
    if _collective():
        from jax.experimental import multihost_utils

        array = np.frombuffer(token, np.uint32)
        token = np.asarray(multihost_utils.broadcast_one_to_all(array), np.uint32).tobytes()
    elif _count() > 1:
        token = _meet("token", token)[0]
    return token.hex()


def sum_across(partial: np.ndarray) -> np.ndarray:
    """The element-wise sum (uint64, wrapping) of every process's ``partial``."""
    if _count() == 1:
        return partial
    if _collective():
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(partial.view(np.uint32))
        stacked = np.asarray(gathered, np.uint32).view(np.uint64)
    else:
        shares = _meet("digests", np.ascontiguousarray(partial, np.uint64).tobytes())
        stacked = np.stack([np.frombuffer(shares[p], np.uint64) for p in sorted(shares)])
    total = np.sum(stacked, axis=0, dtype=np.uint64)
    return np.asarray(total, np.uint64).reshape(partial.shape)
