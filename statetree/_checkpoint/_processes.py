"""The steps where the processes of a ``jax.distributed`` job meet during a checkpoint.

A checkpoint of a multi-process job is written by all processes together: they agree
on one working directory (``same_token``), add up their shares of each digest
(``sum_across``), and wait for each other before process 0 (``is_primary``) commits
(``barrier``). In a one-process program each of these is free.
"""

import numpy as np

__all__ = ["is_primary", "barrier", "same_token", "sum_across"]


def _count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the files every process shares (process 0)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (nothing to wait for in one process)."""
    if _count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def same_token() -> str:
    """A random token, the same on every process (process 0's, broadcast)."""
    token = np.frombuffer(np.random.default_rng().bytes(8), np.uint32)
    if _count() > 1:
        from jax.experimental import multihost_utils

        token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
    return "".join(f"{int(t):08x}" for t in token)


def sum_across(partial: np.ndarray) -> np.ndarray:
    """The element-wise sum (uint64, wrapping) of every process's ``partial``."""
    if _count() == 1:
        return partial
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(partial.view(np.uint32))
    total = np.sum(np.asarray(gathered, np.uint32).view(np.uint64), axis=0, dtype=np.uint64)
    return np.asarray(total, np.uint64)
