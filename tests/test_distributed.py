"""statetree on a jax.distributed job: 2 processes x 2 CPU devices on this machine.

One launch (tests/multidevice/distributed_checks.py) serves training and checkpoint
checks: the 2-process job and a 1-process, 4-device run go side by side, train the same
model (plain and packed), and restore each other's checkpoints; the job is then killed
in the middle of a save. The docs page docs/multi-process.md runs as a 2-process job too.
"""

import pathlib
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
