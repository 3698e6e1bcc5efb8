"""Preemption: the SIGTERM a cluster scheduler sends every process of a job before it
takes the machines back, turned into one checkpoint at a step all processes agree on.

On a ``jax.distributed`` job JAX already runs the agreement: its preemption service
(``jax_enable_preemption_service``, on by default) catches SIGTERM in every process,
tells the others through the coordination service, and picks the next step that every
process can still reach; ``multihost_utils.reached_preemption_sync_point(step)`` is True
on every process at that same step. orbax's manager asks it at every ``save``.

A one-process program has no coordination service, so ``Preemption`` catches SIGTERM
itself (a Python signal handler, installed by the manager and put back by ``close``)
and the next step boundary is the step: there is no one to agree with.
"""

import signal
import threading
from typing import Any

__all__ = ["Preemption"]


class Preemption:
    """Whether a preemption notice has reached the step boundary ``step``."""

    def __init__(self) -> None:
        import jax

        self.received = False
        self._previous: Any = None
        self._installed = False
        if jax.process_count() > 1:
            return  # JAX's preemption service catches SIGTERM (and must keep doing so)
        if threading.current_thread() is not threading.main_thread():
            raise ValueError(
                "CheckpointManager(save_on_preemption=True): in a one-process program "
                "the manager catches SIGTERM itself, and Python lets only the main thread "
                "install a signal handler. Create the manager in the main thread."
            )
        self._previous = signal.signal(signal.SIGTERM, self._notice)
        self._installed = True

    def _notice(self, signum: int, frame: Any) -> None:
        self.received = True  # acted on at the next step boundary (manager.save)

    def reached(self, step: int, orbax_manager: Any) -> bool:
        """True at the step where every process saves before the job is taken away."""
        if self._installed:
            return self.received
        return bool(orbax_manager.reached_preemption(step))

    def close(self) -> None:
        """Put back the SIGTERM handler that was there before (one process)."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
