"""Join the jax.distributed job described by the environment (tests/_multiprocess.py),
as docs/multi-process.md does; with no ``COORDINATOR`` set, stay one process."""

import os

import jax


def join() -> None:
    if "COORDINATOR" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["COORDINATOR"],
            num_processes=int(os.environ["NUM_PROCESSES"]),
            process_id=int(os.environ["PROCESS_ID"]),
            initialization_timeout=120,
        )
