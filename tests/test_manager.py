"""st.CheckpointManager: numbered steps on orbax's manager, keep-N, best-N, async
saves holding their own snapshot, a kill during an async save, resume from the latest."""

import os
import pathlib
import signal
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _subprocess import ROOT, SCRIPTS, child_command, child_env

import statetree as st


def model_and_step():
    model = st.mutable(
        {
            "w": st.Param(jnp.zeros((4, 3))),
            "stat": (stat := st.BatchStat(jnp.zeros(3, jnp.bfloat16))),
            "stat_again": stat,
            "count": jnp.array(0, jnp.int32),
        }
    )

    @jax.jit
    def step(graphdef, state):
        m = st.merge(graphdef, state)
        m["w"][...] += 1.0
        m["stat"][...] += 0.5
        m["count"][...] += 1

    return model, lambda: step(*st.split(model))


def test_save_every_step_keep_three_restore_latest(tmp_path: pathlib.Path) -> None:
    model, step = model_and_step()
    snapshots = {}
    with st.CheckpointManager(tmp_path / "run", max_to_keep=3) as manager:
        assert manager.latest_step() is None
        for i in range(10):
            step()
            assert manager.save(i, model)
            # The async save holds its own snapshot: the next in-place step (which
            # donates the Variables' buffers) runs while it is written.
            snapshots[i] = np.asarray(model["w"].value).copy()
        manager.wait_until_finished()
        assert manager.all_steps() == [7, 8, 9] and manager.latest_step() == 9
    assert sorted(os.listdir(tmp_path / "run")) == ["7", "8", "9"]

    resumed, _ = model_and_step()
    w = resumed["w"]
    manager = st.CheckpointManager(tmp_path / "run", max_to_keep=3)
    assert manager.restore(resumed) == 9
    assert resumed["w"] is w and resumed["stat"] is resumed["stat_again"]  # in place
    np.testing.assert_array_equal(np.asarray(w.value), snapshots[9])
    assert int(resumed["count"].value) == 10
    assert manager.restore(resumed, step=7) == 7
    np.testing.assert_array_equal(np.asarray(w.value), snapshots[7])
    with pytest.raises(st.CheckpointError, match=r"no step 3 in .*saved steps: \[7, 8, 9\]"):
        manager.restore(resumed, step=3)
    manager.close()


def test_best_steps_by_a_metric_and_intervals(tmp_path: pathlib.Path) -> None:
    model, step = model_and_step()
    losses = [5.0, 1.0, 4.0, 0.5, 3.0, 2.0]
    with st.CheckpointManager(
        tmp_path, max_to_keep=2, best_metric="loss", best_mode="min", async_save=False
    ) as manager:
        for i, loss in enumerate(losses):
            step()
            manager.save(i, model, metrics={"loss": loss})
        assert manager.all_steps() == [1, 3] and manager.best_step() == 3
        with pytest.raises(ValueError, match=r"by 'loss', which metrics does not hold"):
            manager.save(9, model)
    with st.CheckpointManager(tmp_path / "every2", save_interval_steps=2) as manager:
        assert [manager.save(i, model) for i in range(4)] == [True, False, True, False]
        assert manager.save(5, model, force=True)
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 2, 5]
    with pytest.raises(ValueError, match="best_mode"):
        st.CheckpointManager(tmp_path, best_mode="lowest")
    with pytest.raises(ValueError, match="at least one step"):
        st.CheckpointManager(tmp_path, max_to_keep=0)


def test_restore_checks_fit_and_digests(tmp_path: pathlib.Path) -> None:
    model, step = model_and_step()
    with st.CheckpointManager(tmp_path, async_save=False) as manager:
        with pytest.raises(st.CheckpointError, match="no step  in"):
            manager.restore(model)
        step()
        manager.save(1, model)
        other = st.mutable({"w": st.Param(jnp.zeros((4, 2)))})
        with pytest.raises(st.StructureError, match=r"\['w'\]: checkpoint has float32\[4, 3\]"):
            manager.restore(other)
        data = sorted(
            (p for p in (tmp_path / "1" / "arrays").rglob("d/*") if p.is_file()),
            key=lambda p: p.stat().st_size,
        )
        for file in data:  # damage every data file
            raw = bytearray(file.read_bytes())
            raw[len(raw) // 2] ^= 0x10
            file.write_bytes(bytes(raw))
        live, _ = model_and_step()
        before = np.asarray(live["w"].value).copy()
        with pytest.raises(st.CheckpointError, match="damaged"):
            manager.restore(live)
        np.testing.assert_array_equal(np.asarray(live["w"].value), before)

        @jax.jit
        def inside(x):
            manager.save(2, model)
            return x

        with pytest.raises(TypeError, match=r"inside jax\.jit"):
            inside(1.0)


def test_a_job_killed_during_an_async_save_resumes_from_the_latest(
    tmp_path: pathlib.Path,
) -> None:
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        child = subprocess.Popen(
            child_command(SCRIPTS / "manager_async_kill.py", str(tmp_path / "run")),
            env=child_env(1),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not {"WRITING 4", "TRAINING"} <= set(log.read_text().split("\n")):
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, log.read_text()
    assert sorted(os.listdir(tmp_path / "run")) != ["1", "2", "3", "4"]
    model = st.mutable({"w": st.Param(jnp.zeros(4)), "step": jnp.array(0)})
    with st.CheckpointManager(tmp_path / "run", max_to_keep=3) as manager:
        assert manager.all_steps() == [1, 2, 3]
        assert manager.restore(model) == 3
    assert model["w"].value.tolist() == [3.0] * 4 and int(model["step"].value) == 3


def test_save_on_preemption_in_one_process(tmp_path: pathlib.Path) -> None:
    model, step = model_and_step()
    before = signal.getsignal(signal.SIGTERM)
    with st.CheckpointManager(
        tmp_path, save_interval_steps=100, save_on_preemption=True
    ) as manager:
        assert signal.getsignal(signal.SIGTERM) is not before  # the manager catches it
        for i in range(1, 10):
            step()
            assert manager.save(i, model) == (i in (1, 5))  # orbax saves a first step
            if i == 4:
                os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's preemption notice
            if manager.preempted:
                break
        assert i == 5 and manager.all_steps() == [1, 5]  # the next step, on disk
        w = np.asarray(model["w"].value).copy()
    assert signal.getsignal(signal.SIGTERM) is before  # put back by close
    resumed, _ = model_and_step()
    with st.CheckpointManager(tmp_path) as manager:
        assert manager.restore(resumed) == 5
    np.testing.assert_array_equal(np.asarray(resumed["w"].value), w)


def test_save_on_preemption_needs_the_main_thread(tmp_path: pathlib.Path) -> None:
    errors = []

    def make() -> None:
        try:
            st.CheckpointManager(tmp_path, save_on_preemption=True)
        except ValueError as e:
            errors.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join(timeout=60)
    (error,) = errors
    with pytest.raises(ValueError, match=r"save_on_preemption=True.*main thread"):
        raise error
