"""What can go wrong with a checkpoint, and the errors that say so.

Three different causes, three different messages, because each has a different fix:

- the files: no complete checkpoint at the path, or one whose digests do not match
  (``CheckpointError``, built by ``damaged`` for the second);
- the call: ``save``/``restore`` inside ``jax.jit``, or a traced value
  (``refuse_inside_jit``, ``refuse_traced``: ``TypeError``);
- the job: another process of a ``jax.distributed`` job stopped answering in the middle
  of the call (``PeerError``, a ``CheckpointError`` too, raised by ``_processes``). It
  never blames the files: the last committed checkpoint is intact.
"""

from typing import Any

from .. import _jax
from .._errors import StateTreeError, format_path
from .._write import storage as _storage

__all__ = ["CheckpointError", "PeerError", "damaged", "refuse_inside_jit", "refuse_traced"]


class CheckpointError(StateTreeError, OSError):
    """A path that holds no complete, intact statetree checkpoint (missing, unfinished,
    damaged: its digests do not match), or one ``save`` would replace; or a checkpoint
    call that another process of the job left in the middle (``st.PeerError``)."""


class PeerError(CheckpointError, TimeoutError):
    """Another process of a ``jax.distributed`` job stopped answering during a
    checkpoint call (it died, or hangs): raised on every surviving process within
    ``st.CheckpointManager(peer_timeout=...)`` / ``st.save(..., peer_timeout=...)``
    seconds, naming the call and the missing process(es). The files are not at fault:
    the last checkpoint that was committed is intact and still the latest. End this
    process (the job cannot go on without its peer) and relaunch the job.

    Attributes:
      call: the statetree call that was interrupted (e.g. ``"st.save"``).
      missing: the ids of the processes that did not answer.

    Examples:
      >>> import statetree as st
      >>> e = st.PeerError("st.save", [1], 60.0)
      >>> isinstance(e, st.CheckpointError), isinstance(e, TimeoutError), e.missing
      (True, True, [1])
    """

    def __init__(self, call: str, missing: list[int], waited: float, detail: str = "") -> None:
        self.call = call
        self.missing = list(missing)
        who = ", ".join(map(str, self.missing)) if self.missing else "unknown"
        note = f" ({detail})" if detail else ""
        super().__init__(
            f"{call}: process(es) {who} of this jax.distributed job stopped answering "
            f"during the call (waited {waited:.0f} s){note}. A process died or hangs; the "
            "checkpoint files are not at fault: every checkpoint committed is intact, the "
            "latest one is still the latest, and nothing half-written is listed or "
            "restored. End this process (os._exit: jax.distributed's shutdown would wait "
            "for the missing process) and relaunch the job; it resumes from the latest "
            "checkpoint (CheckpointManager.restore)."
        )

    def __reduce__(self) -> Any:
        return (type(self), (self.call, self.missing, 0.0))


def damaged(where: Any, why: str) -> CheckpointError:
    """The error for files that do not hold what ``save`` wrote (``why`` says how)."""
    return CheckpointError(
        f"restore: the checkpoint at {where} is damaged: {why}. Nothing was restored. "
        "st.save never leaves such a checkpoint at its path: the files were changed or "
        "truncated afterwards (disk, copy, edit). Restore an earlier checkpoint."
    )


def refuse_inside_jit(verb: str) -> None:
    """``save``/``restore`` touch files: refuse them while ``jax.jit`` traces."""
    if not _jax.top_level():
        raise TypeError(
            f"{verb}: called inside jax.jit, while it traces a function. st.{verb} reads "
            "and writes files, which cannot be part of a compiled computation (the function is "
            f"traced once; files are not values). Call st.{verb} outside the jitted "
            "function, on the live tree, before or after the step."
        )


def refuse_traced(verb: str, path: Any, raw: Any) -> None:
    """Refuse a value that has no concrete value here (an escaped tracer)."""
    if _storage.is_traced(raw):
        raise TypeError(
            f"{verb}: the value at {format_path(path)} is traced: st.{verb} reads and "
            "writes files, which cannot happen inside jax.jit or another transform (the "
            "function is traced once and compiled; files are not part of a computation). "
            f"Call st.{verb} outside, on the live tree, before or after the jitted step."
        )


# Public classes print as `statetree.X` in reprs and tracebacks (re-exported there).
CheckpointError.__module__ = "statetree"
PeerError.__module__ = "statetree"
