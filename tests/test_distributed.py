"""statetree on a jax.distributed job: 2 processes x 2 CPU devices on this machine.

One launch (tests/multidevice/distributed_checks.py) serves training and checkpoint
checks: the 2-process job and a 1-process, 4-device run go side by side, train the same
model (plain and packed), and restore each other's checkpoints; the job is then killed
in the middle of a save. The docs page docs/multi-process.md runs as a 2-process job too.
"""

import pathlib
import signal
import time

import jax.numpy as jnp
import numpy as np
import pytest
from _multiprocess import Job
from _subprocess import SCRIPTS

import statetree as st

SCRIPT = SCRIPTS / "distributed_checks.py"


def test_two_processes_train_and_checkpoint_like_one(tmp_path: pathlib.Path) -> None:
    pair = Job(SCRIPT, str(tmp_path), processes=2, devices=2)
    single = Job(SCRIPT, str(tmp_path), processes=1, devices=4, distributed=False)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "killme").exists() or single.procs[0].poll() is None:
            failed = [p.returncode for p in (*pair.procs, *single.procs) if p.poll()]
            if failed or time.monotonic() > deadline:
                pytest.fail(
                    f"exit codes {failed} (or timed out):\n"
                    + "\n".join(pair.outputs() + single.outputs()),
                    pytrace=False,
                )
            time.sleep(0.2)
    finally:
        pair.stop()
        single.stop()
    for out in pair.outputs():
        assert "pair: checks passed" in out and "multi-process.md ran" in out, out
    assert "packed checkpoint of the single side restored" in pair.output(1)

    one, two = np.load(tmp_path / "single.npz"), np.load(tmp_path / "pair.npz")
    assert sorted(one.files) == sorted(two.files)
    for name in ("plain", "packed"):  # step for step
        np.testing.assert_allclose(two[f"{name}_losses"], one[f"{name}_losses"], rtol=1e-5)
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)

    # The save killed before its commit left only its working directory.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "killed" not in names and any(n.startswith(".killed.statetree-tmp-") for n in names)
    with pytest.raises(st.CheckpointError, match=r"no checkpoint at .*killed.*unfinished save"):
        st.restore(tmp_path / "killed", {"w": st.Variable(jnp.zeros(1), mutable=True)})


DEAD_PEER_MODES = {  # mode: the call named on the surviving process
    "save": "st.save",
    "restore": "st.restore",
    "manager_save": "CheckpointManager.wait_until_finished",
    "manager_restore": "CheckpointManager.restore",
}


def test_a_dead_peer_is_named_and_the_checkpoints_stay_intact(tmp_path: pathlib.Path) -> None:
    # tests/multidevice/dead_peer.py: process 1 SIGKILLs itself in the middle of each
    # call; the four jobs run side by side.
    jobs = {}
    for mode in DEAD_PEER_MODES:
        (tmp_path / mode).mkdir()
        jobs[mode] = Job(SCRIPTS / "dead_peer.py", str(tmp_path / mode), mode)
    try:
        deadline = time.monotonic() + 240
        for job in jobs.values():
            job.procs[0].wait(timeout=max(1.0, deadline - time.monotonic()))
            job.procs[1].wait(timeout=30)
    finally:
        for job in jobs.values():
            job.stop()
    for mode, job in jobs.items():
        out = job.output(0)
        assert [p.returncode for p in job.procs] == [0, -signal.SIGKILL], job.outputs()
        (line,) = [x for x in out.splitlines() if x.startswith("PEER ERROR ")]
        seconds, message = float(line.split()[2]), line.split(" ", 3)[3]
        assert message.startswith(f"{DEAD_PEER_MODES[mode]}: process(es) 1 of this"), line
        assert "damaged" not in message and "the checkpoint files are not at fault" in message
        assert seconds < 60, line  # the default bound; this job waits 4 s per point

    # The last committed checkpoint is intact and still the latest; nothing half-written
    # is listed.
    def target() -> dict:
        return st.mutable({"w": st.Param(jnp.zeros((64, 32))), "b": st.Param(jnp.zeros(3))})

    for mode in ("save", "restore"):
        names = [p.name for p in (tmp_path / mode).iterdir() if not p.name.startswith(".")]
        assert names == ["step_1"], names
        tree = target()
        st.restore(tmp_path / mode / "step_1", tree)
        assert float(tree["w"][...].min()) == float(tree["b"][...].max()) == 1.0
    for mode in ("manager_save", "manager_restore"):
        with st.CheckpointManager(tmp_path / mode / "run") as manager:
            assert manager.all_steps() == [1]
            tree = target()
            assert manager.restore(tree) == 1
            assert float(tree["w"][...].min()) == 1.0


def test_peer_timeout_must_be_positive(tmp_path: pathlib.Path) -> None:
    tree = st.mutable({"w": st.Param(jnp.zeros(2))})
    with pytest.raises(ValueError, match=r"save: peer_timeout=0 must be a positive number"):
        st.save(tmp_path / "c", tree, peer_timeout=0)
    with pytest.raises(ValueError, match=r"restore: peer_timeout=nan must be a positive"):
        st.restore(tmp_path / "c", tree, peer_timeout=float("nan"))
    with pytest.raises(ValueError, match=r"CheckpointManager: peer_timeout=-1.0 must be"):
        st.CheckpointManager(tmp_path / "run", peer_timeout=-1.0)
    assert not (tmp_path / "c").exists()
