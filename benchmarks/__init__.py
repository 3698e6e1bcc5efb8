"""statetree's benchmark suite: ``python -m benchmarks`` (see ``benchmarks/_harness.py``).

Every ``benchmarks/bench_*.py`` module is one workload from SPEC section 7, measured
against its peers (raw JAX, Flax NNX, Equinox) in one process, in one table.
"""
