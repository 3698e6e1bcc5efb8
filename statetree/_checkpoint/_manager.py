"""``st.CheckpointManager``: numbered checkpoints of a training job, on orbax's manager.

orbax-checkpoint's ``CheckpointManager`` already does what a training job needs from
its checkpoints: one directory per step, written atomically (a temporary directory
renamed into place when complete), keep the last N or the best N by a metric, find the
latest step, save asynchronously, coordinate the processes of a ``jax.distributed``
job. This class hands it statetree trees: each step holds two orbax items,

- ``arrays``: the values (``StandardSave``), one per distinct Variable, Ref or array;
- ``index``: statetree's index (``JsonSave``): paths, kinds, dtypes, shapes, sharing,
  and one digest per value,

the same contents as an ``st.save`` directory, restored with the same checks (the tree
must fit; every value's digest must match before the first write; then in place).

Async saves: reading a mutable Variable gives a new buffer, so the arrays handed to
orbax are the save's own snapshot; the next in-place training step (which donates the
Variables' buffers) cannot touch them. The snapshot costs one device copy of the state,
taken when ``save`` is called, and the host time to digest it.
"""

import os
from collections.abc import Mapping
from typing import Any

from . import _orbax
from ._failures import CheckpointError, refuse_inside_jit
from ._index import Live, encode
from ._preemption import Preemption
from ._processes import PEER_TIMEOUT, check_timeout, coordinated
from ._restore import restore_into

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Numbered checkpoints of a training job's state, kept and found by step.

    Built on orbax-checkpoint's ``CheckpointManager`` (one directory per step, written
    atomically; keep the last ``max_to_keep``, or the best by a metric; async saves).
    It holds statetree trees: ``save(step, tree)`` stores the tree's state as
    ``st.save`` does (sharing, kinds, dtypes, a digest per value); ``restore(tree)``
    writes the latest (or a given) step back into the live tree's Variables in place.
    Under ``jax.distributed`` every process makes the manager and calls each method.

    Args:
      directory: where the step directories go (created if needed).
      max_to_keep: keep at most this many steps (the newest, or with ``best_metric``
        the best); None keeps all.
      best_metric: the name of a metric given to ``save(..., metrics={...})``; steps
        are then kept by it instead of by recency.
      best_mode: ``"max"`` or ``"min"``: which end of ``best_metric`` is best.
      save_interval_steps: ``save`` writes steps divisible by it, and also the first
        step it is given while the directory holds no checkpoint yet, whatever its
        number (orbax's rule: a fresh run saves at once); ``force=True`` writes any
        step. ``should_save(step)`` answers for a given step.
      async_save: ``save`` returns once the state is snapshotted and digested; the
        files are written in the background (``wait_until_finished`` waits).
      peer_timeout: under ``jax.distributed``, how long (seconds) a method waits for
        another process before raising ``st.PeerError`` naming it (it died or hangs).
      save_on_preemption: on SIGTERM (a scheduler's preemption notice) to the job's
        processes, the next ``save(step, ...)`` that every process reaches writes that
        step whatever the interval, waits until it is on disk, and sets ``preempted``:
        leave the training loop then, and the relaunched job resumes from that step.
        Call ``save`` at every step. On a ``jax.distributed`` job the step is agreed on
        by JAX's preemption service; in one process the manager catches SIGTERM itself
        (create it in the main thread).

    Attributes:
      preempted: True once ``save`` wrote the step at which a preemption notice
        reached every process (``save_on_preemption``): the job should exit now.

    Raises:
      ValueError: ``best_mode`` is not ``"max"`` or ``"min"``, ``max_to_keep`` is
        below 1, or ``peer_timeout`` is not a positive number.
      ImportError: orbax-checkpoint (the ``checkpoint`` extra) is not installed.

    Examples:
      >>> import tempfile, jax.numpy as jnp, statetree as st
      >>> model = st.mutable({"w": st.Param(jnp.zeros(2))})
      >>> with st.CheckpointManager(tempfile.mkdtemp(), max_to_keep=2) as manager:
      ...     for step in range(4):
      ...         model["w"][...] += 1.0
      ...         _ = manager.save(step, model)
      ...     manager.wait_until_finished()
      ...     print(manager.all_steps(), manager.latest_step())
      ...     model["w"][...] = 0.0
      ...     print(manager.restore(model), model["w"][...])
      [2, 3] 3
      3 [4. 4.]
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "max",
        save_interval_steps: int = 1,
        async_save: bool = True,
        peer_timeout: float = PEER_TIMEOUT,
        save_on_preemption: bool = False,
    ) -> None:
        if best_mode not in ("max", "min"):
            raise ValueError(
                f"CheckpointManager(best_mode={best_mode!r}): best_mode says which end of "
                "best_metric is best; pass 'max' (e.g. accuracy) or 'min' (e.g. loss)."
            )
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(
                f"CheckpointManager(max_to_keep={max_to_keep}): keep at least one step, "
                "or pass None to keep them all."
            )
        self.peer_timeout = check_timeout("CheckpointManager", peer_timeout)
        self.preempted = False
        self._preemption = Preemption() if save_on_preemption else None
        ocp = _orbax.orbax()
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric = best_metric
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            best_fn=None if best_metric is None else _Metric(best_metric),
            best_mode=best_mode,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            # orbax's background commit waits for every process at most this long.
            async_options=ocp.options.AsyncOptions(timeout_secs=max(1, round(self.peer_timeout))),
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "arrays": ocp.StandardCheckpointHandler(),
                "index": ocp.JsonCheckpointHandler(),
            },
        )

    # ------------------------------------------------------------------ steps
    def all_steps(self) -> list[int]:
        """The steps saved (and not yet removed), oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the best ``best_metric`` (the latest without one)."""
        return self._manager.best_step()

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would write (``save_interval_steps``)."""
        return bool(self._manager.should_save(step))

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        tree: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save the state of ``tree`` as ``step``; return whether it was written.

        With ``async_save`` (the default) this returns once the values are snapshotted
        and digested; training may go on, in place, while the files are written. With
        ``save_on_preemption``, the step at which a preemption notice (SIGTERM) has
        reached every process is written whatever the interval and waited for, and
        ``preempted`` becomes True: stop training and exit.

        Args:
          step: the step number (larger than every saved step).
          tree: a live tree, as for ``st.save``.
          metrics: numbers about this step (e.g. ``{"loss": 0.12}``), used by
            ``best_metric``.
          force: write even when ``save_interval_steps`` would skip this step.

        Raises:
          TypeError: called inside ``jax.jit``, or a value is traced.
          ValueError: ``best_metric`` is set and ``metrics`` lacks it.
        """
        refuse_inside_jit("save")
        preempted = self._preemption is not None and self._preemption.reached(step, self._manager)
        if not (preempted or force or self.should_save(step)):
            return False
        if self.best_metric is not None and self.best_metric not in (metrics or {}):
            raise ValueError(
                f"CheckpointManager.save(step={step}): the manager keeps the best steps "
                f"by {self.best_metric!r}, which metrics does not hold ({metrics!r}). Pass "
                f"metrics={{{self.best_metric!r}: value}}."
            )
        if not preempted:
            with self._coordinated("save"):
                return self._save(step, tree, metrics, force=force)
        with self._coordinated("save"):
            saved = step in self._manager.all_steps()  # the notice came right after a save
            written = saved or self._save(step, tree, metrics, force=True)
            self._manager.wait_until_finished()  # on disk before the job goes away
        self.preempted = True
        return written

    def _save(
        self, step: int, tree: Any, metrics: Mapping[str, Any] | None, *, force: bool
    ) -> bool:
        index, stored = encode(Live.of(tree))
        ocp = self._ocp
        args = ocp.args.Composite(
            arrays=ocp.args.StandardSave(stored), index=ocp.args.JsonSave(index)
        )
        return bool(self._manager.save(step, args=args, metrics=metrics, force=force))

    def wait_until_finished(self) -> None:
        """Wait until every save started so far is on disk.

        Raises:
          PeerError: another process of the job died or hangs (named); the step being
            written is not listed, and the steps before it are intact.
        """
        with self._coordinated("wait_until_finished"):
            self._manager.wait_until_finished()

    # ------------------------------------------------------------------ restore
    def restore(self, tree: Any, step: int | None = None) -> int:
        """Restore ``step`` (default: the latest) into ``tree``'s Variables, in place,
        with ``st.restore``'s checks; return the step restored.

        Raises:
          CheckpointError: no step saved (or not ``step``), or its files are damaged.
          StructureError: the tree does not fit the checkpoint (every difference named).
          PeerError: another process of the job died or hangs (named); the files are
            not at fault and the tree is unchanged.
          TypeError: called inside ``jax.jit``.
        """
        refuse_inside_jit("restore")
        with self._coordinated("restore"):
            return self._restore(tree, step)

    def _restore(self, tree: Any, step: int | None) -> int:
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
        if step is None or step not in steps:
            raise CheckpointError(
                f"CheckpointManager.restore: no step {'' if step is None else step} in "
                f"{self.directory} (saved steps: {steps or 'none'}). Start from scratch "
                "when latest_step() is None; otherwise restore one of the saved steps."
            )
        where = os.path.join(self.directory, str(step))
        ocp, manager, at = self._ocp, self._manager, step

        def read_index() -> Any:
            args = ocp.args.Composite(index=ocp.args.JsonRestore())
            return _orbax.read("index", where, lambda: manager.restore(at, args=args)["index"])

        def read_arrays(targets: dict[str, Any]) -> Any:
            return _orbax.read_arrays(ocp, os.path.join(where, "arrays"), targets, where)

        restore_into(tree, where, read_index, read_arrays)
        return step

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Wait for pending saves and release orbax's resources."""
        with self._coordinated("close"):
            self._manager.close()
        if self._preemption is not None:
            self._preemption.close()

    def _coordinated(self, method: str) -> Any:
        return coordinated(f"CheckpointManager.{method}", self.peer_timeout)

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointManager({self.directory!r}, steps={self.all_steps()})"


class _Metric:
    """orbax's ``best_fn``: one named metric (a class, so the manager stays picklable
    and its repr names the metric)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[self.name])

    def __repr__(self) -> str:
        return f"metric {self.name!r}"


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
CheckpointManager.__module__ = "statetree"
