"""statetree on a jax.distributed job: 2 processes x 2 CPU devices on this machine.

One launch (tests/multidevice/distributed_checks.py) serves training and checkpoint
checks: the 2-process job and a 1-process, 4-device run go side by side, train the same
model (plain and packed), and restore each other's checkpoints; the job is then killed
in the middle of a save. The docs page docs/multi-process.md runs as a 2-process job too.

Faults: a process SIGKILLed in the middle of each coordinated call is named by
st.PeerError on the other (tests/multidevice/dead_peer.py), and a training job killed at
seeded moments, relaunched each time, ends bit for bit where an uninterrupted one does
(tests/multidevice/train_job.py; STATETREE_SOAK=KILLS runs the long soak).
"""

import os
import pathlib
import random
import re
import signal
import time
from typing import Any

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


TRAIN_JOB = SCRIPTS / "train_job.py"


def _wait_for(job: Job, pattern: str, deadline: float) -> re.Match[str] | None:
    """The first match of ``pattern`` in process 0's output, waiting until it appears or
    until every process has exited (None then)."""
    while True:
        if found := re.search(pattern, job.output(0), re.M):
            return found
        if all(p.poll() is not None for p in job.procs) or time.monotonic() > deadline:
            return None
        time.sleep(0.02)


# Where a SIGKILL is aimed: right after the line (mark, n) with n passing the test.
AIMS = {
    "mid-save": ("TRAINED", lambda n: n % 3 == 0),  # in save(n), which writes
    "mid-async-save": ("STEP", lambda n: n % 3 == 0),  # save(n) returned: writing
    "mid-step": ("STEP", lambda n: n % 3 == 1),  # in step n + 1 (its save writes nothing)
}


def _wait_for_mark(job: Job, mark: str, test: Any, after: int, deadline: float) -> bool:
    """Wait until process 0 prints ``mark n`` for some n > ``after`` passing ``test``."""
    while time.monotonic() < deadline:
        found = re.findall(rf"^{mark} (\d+)$", job.output(0), re.M)
        if any(int(n) > after and test(int(n)) for n in found):
            return True
        if any(p.poll() is not None for p in job.procs):
            return False
        time.sleep(0.005)
    return False


def soak(directory: pathlib.Path, *, kills: int, seed: int, steps: int) -> dict[str, Any]:
    """Run a 2-process training job (tests/multidevice/train_job.py: the default and the
    packed form side by side) to ``steps``, killing it ``kills`` times at seeded moments
    (SIGKILL of one process, or SIGTERM of both: a preemption) and relaunching it from
    the manager's latest step each time. Returns the final values and what each kill
    cost."""
    rng = random.Random(seed)
    record: list[dict[str, Any]] = []
    while len(record) < kills:
        launched = time.monotonic()
        job = Job(TRAIN_JOB, str(directory), str(steps))
        try:
            started = _wait_for(job, r"^START (\d+)$", launched + 120)
            assert started, job.outputs()
            resume = time.monotonic() - launched
            target = int(started.group(1)) + rng.randint(0, 3)
            # JAX's preemption service agrees on a step some steps after the notice.
            assert target < steps - 15, f"{steps} steps are too few for {kills} kills"
            assert _wait_for(job, rf"^STEP {target}$", launched + 120), job.outputs()
            kind = rng.choice(["SIGKILL one", "SIGTERM all"])
            if kind == "SIGKILL one":  # aim at a moment; the job saves every third step
                aim = rng.choice(list(AIMS))
                assert _wait_for_mark(job, *AIMS[aim], target, launched + 120), job.outputs()
            time.sleep(rng.uniform(0.0, 0.01))
            mark, n = re.findall(r"^(TRAINED|STEP) (\d+)$", job.output(0), re.M)[-1]
            if kind == "SIGKILL one":
                os.kill(job.procs[rng.randrange(2)].pid, signal.SIGKILL)
                time.sleep(0.3)  # the scheduler then ends the rest of the job
                job.stop()
            else:
                for p in job.procs:
                    os.kill(p.pid, signal.SIGTERM)
                for p in job.procs:
                    p.wait(timeout=90)
                assert [p.returncode for p in job.procs] == [0, 0], job.outputs()
        finally:
            job.stop()
        last = max(int(k) for k in re.findall(r"^STEP (\d+)$", job.output(0), re.M))
        with st.CheckpointManager(directory / "run") as manager:
            latest = manager.latest_step()
        if kind == "SIGTERM all":  # every process stopped at one step, saved there
            assert re.findall(r"^PREEMPTED (\d+)$", job.output(0), re.M) == [str(latest)]
            assert re.findall(r"^PREEMPTED (\d+)$", job.output(1), re.M) == [str(latest)]
            where = "preempted"
        elif int(n) % 3:  # where the kill landed, from what process 0 printed last
            where = "mid-step"
        else:
            where = "mid-save" if mark == "TRAINED" else "mid-async-save"
        lost = last - (-1 if latest is None else latest)
        record.append({"kind": kind, "where": where, "resume_s": resume, "lost_steps": lost})
    final = Job(TRAIN_JOB, str(directory), str(steps))
    outs = final.wait(240)
    assert "DONE" in outs[0], outs
    return {"final": dict(np.load(directory / "final.npz")), "kills": record}


def check_soak(directory: pathlib.Path, kills: int, seed: int) -> list[dict[str, Any]]:
    """A soak of ``kills`` kills against an uninterrupted run (launched alongside):
    the final parameters and optimizer state, default and packed, bit for bit."""
    steps = 15 * kills + 10  # a preemption runs some steps on before the agreed one
    (directory / "base").mkdir()
    (directory / "soak").mkdir()
    base = Job(TRAIN_JOB, str(directory / "base"), str(steps))
    try:
        result = soak(directory / "soak", kills=kills, seed=seed, steps=steps)
    finally:
        base_out = base.wait(240)
    assert "DONE" in base_out[0]
    expected = dict(np.load(directory / "base" / "final.npz"))
    got = result["final"]
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for form in ("default", "packed"):  # parameters and optimizer state of both forms
        assert any(k.startswith(f"{form}/1/") for k in got) and f"{form}/0/w1" in got
    for key, value in expected.items():  # bit for bit
        assert got[key].tobytes() == value.tobytes(), key
    assert len(result["kills"]) == kills, result["kills"]
    return result["kills"]


def test_a_job_killed_at_random_resumes_to_the_same_numbers(tmp_path: pathlib.Path) -> None:
    kills = check_soak(tmp_path, kills=2, seed=1)  # SIGKILL one mid-async-save, SIGTERM all
    assert [k["kind"] for k in kills] == ["SIGKILL one", "SIGTERM all"], kills


@pytest.mark.skipif(
    "STATETREE_SOAK" not in os.environ,
    reason="the long soak: STATETREE_SOAK=KILLS (20 or more) runs it (minutes)",
)
def test_soak_long(tmp_path: pathlib.Path) -> None:
    kills = check_soak(tmp_path, kills=int(os.environ["STATETREE_SOAK"]), seed=2026)
    for k in kills:
        print(k)  # -s shows every kill: its kind, where it landed, the resume time, lost steps
    resumes = sorted(k["resume_s"] for k in kills)
    lost = [k["lost_steps"] for k in kills]
    print(
        f"{len(kills)} kills survived; "
        + ", ".join(
            f"{w}: {sum(k['where'] == w for k in kills)}"
            for w in sorted({k["where"] for k in kills})
        )
        + f"; time to resume (launch -> first step) median {resumes[len(resumes) // 2]:.1f} s, "
        f"max {resumes[-1]:.1f} s; lost steps per kill mean {sum(lost) / len(lost):.1f}, "
        f"max {max(lost)}"
    )
