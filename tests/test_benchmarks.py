"""The benchmark suite keeps running: every module's smallest case, tiny sizes, no timing
assertions (performance is measured by ``python -m benchmarks``, never here)."""

import importlib
import math
import pathlib
import sys
import types
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks/` is a top-level package of the repo
    sys.path.insert(0, str(ROOT))

from benchmarks import _harness  # noqa: E402

# Tiny sizes for the modules that take them; any other module runs as run(quick=True).
TINY: dict[str, dict[str, Any]] = {
    "benchmarks.bench_split_merge": {"sizes": (3,)},
    "benchmarks.bench_memory": {"depth": 2, "width": 32, "small": (2, 16)},
    "benchmarks.bench_dispatch": {"counts": (3,)},
    "benchmarks.bench_scan": {"depths": (2,)},
}
OURS = set(TINY)


def check_rows(rows: list[dict[str, Any]]) -> None:
    assert rows, "a benchmark module returned no rows"
    baselines: dict[tuple[str, str], int] = {}
    for r in rows:
        assert set(_harness.KEYS) <= set(r), r
        assert isinstance(r["value"], float), r
        assert isinstance(r["baseline"], bool), r
        key = (r["workload"], r["case"])
        baselines[key] = baselines.get(key, 0) + r["baseline"]
    assert all(n == 1 for n in baselines.values()), f"one baseline per case: {baselines}"


@pytest.fixture(scope="module")
def results() -> dict[str, list[dict[str, Any]]]:
    """Each module's rows, run once for all the tests below."""
    out = {}
    for name in _harness.discover():
        run = importlib.import_module(name).run
        out[name] = run(True, **TINY[name]) if name in TINY else run(True)
    return out


def test_discover_finds_every_module() -> None:
    found = set(_harness.discover())
    on_disk = {f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert found == on_disk
    assert found >= OURS


def test_every_module_runs(results: dict[str, list[dict[str, Any]]]) -> None:
    for name, rows in results.items():
        check_rows(rows)
        assert _harness.format_table(rows), name


def test_every_implementation_ran(results: dict[str, list[dict[str, Any]]]) -> None:
    # Flax and Equinox are dev dependencies, so no peer may be n/a here; W1's checks
    # (the tie is one Variable after st.merge and nnx.merge) raise into a NaN row.
    for name in OURS:
        failed = [(r["impl"], r["note"]) for r in results[name] if math.isnan(r["value"])]
        assert not failed, f"{name}: {failed}"


def test_split_merge_names_every_peer(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results["benchmarks.bench_split_merge"]
    impls = {r["impl"] for r in rows}
    assert impls == {"raw JAX (tree_util)", "statetree", "Flax NNX (graph mode)", "Equinox"}
    assert [r["impl"] for r in rows if r["baseline"]] == ["raw JAX (tree_util)"]


def test_memory_in_place_keeps_one_copy(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results["benchmarks.bench_memory"]
    size = TINY["benchmarks.bench_memory"]
    state_mib = 3 * size["depth"] * size["width"] ** 2 * 4 / 2**20  # params + 2 moments

    prefix = f"{size['depth']}x{size['width']}x{size['width']} f32: "

    def value(impl: str, case: str) -> float:
        (r,) = [r for r in rows if r["impl"] == impl and r["case"] == prefix + case]
        return r["value"]

    in_place = ("statetree (in place)", "statetree (in place, packed)", "Flax NNX (ref=True)")
    for impl in (*in_place, "functional jit, donated"):
        assert value(impl, "aliased") >= state_mib, impl
    assert value("functional jit, no donation", "aliased") == 0
    donated = value("functional jit, donated", "live (args+outs-aliased)")
    for impl in in_place:
        # Equal up to scalars (st.Optimizer's step counter): far below a second copy.
        assert abs(value(impl, "live (args+outs-aliased)") - donated) < 0.01 * state_mib
    assert value("functional jit, no donation", "live (args+outs-aliased)") > 1.9 * donated


# --- the harness ---------------------------------------------------------------------------


def fake_rows(case: str, values: dict[str, float]) -> list[dict[str, Any]]:
    return [
        _harness.row("W9 fake", case, impl, v, "us", baseline=i == 0)
        for i, (impl, v) in enumerate(values.items())
    ]


def test_table_gives_ratios_to_the_baseline() -> None:
    rows = fake_rows("small", {"base": 2.0, "fast": 1.0, "slow": 500.0})
    rows += fake_rows("big", {"base": 4.0, "broken": math.nan})
    rows.insert(0, rows.pop(2))  # a non-baseline row first: the baseline still leads
    lines = _harness.format_table(rows).splitlines()
    assert "base" in lines[2] and "1.00x (base)" in lines[2]
    assert "0.50x" in lines[3] or "0.50x" in lines[4]
    assert any("250x" in line for line in lines)
    assert any("n/a" in line and line.rstrip().endswith("-") for line in lines)
    markdown = _harness.format_table(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| workload | case |")
    assert len(markdown) == 2 + len(rows)


def test_time_us_calls_and_blocks() -> None:
    import jax.numpy as jnp

    calls = []

    def fn() -> Any:
        calls.append(1)
        return jnp.ones(3)

    assert _harness.time_us(fn, quick=True, repeats=2, warmup=1) > 0
    assert len(calls) >= 3
    assert _harness.time_us(lambda: {"not": "an array"}, quick=True, block=False) > 0


@pytest.fixture
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    good = types.ModuleType("benchmarks.bench_good", "W8: a workload that runs.")
    good.run = lambda quick: fake_rows("quick" if quick else "full", {"base": 1.0, "x": 3.0})
    bad = types.ModuleType("benchmarks.bench_bad", "W7: a workload that raises.")

    def broken(quick: bool) -> list[dict[str, Any]]:
        raise RuntimeError("out of coffee")

    bad.run = broken
    names = [good.__name__, bad.__name__]
    for module in (good, bad):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(_harness, "discover", lambda: names)
    return names


def test_collect_selects_by_id_or_name(fake_modules: list[str]) -> None:
    assert {r["impl"] for r in _harness.collect(["w8"], quick=True)} == {"base", "x"}
    assert {r["impl"] for r in _harness.collect(["good"], quick=True)} == {"base", "x"}
    (failed,) = _harness.collect(["W7"], quick=True)
    assert math.isnan(failed["value"]) and "out of coffee" in failed["note"]
    assert len(_harness.collect([], quick=True)) == 3
    # Not a module id or name: matched against the rows' workload names instead.
    assert len(_harness.collect(["W9 fake"], quick=True)) == 2


def test_main_prints_and_writes_markdown(
    fake_modules: list[str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "table.md"
    assert _harness.main(["--quick", "--only", "W8", "--markdown", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "3.00x" in printed and "CPU cores" in printed
    text = path.read_text()
    assert "| W9 fake | quick | base | 1.00 us | 1.00x (base) |" in text
    assert "|  |  | x | 3.00 us | 3.00x |" in text  # workload and case named once


def test_main_fails_when_a_module_fails(
    fake_modules: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _harness.main(["--quick", "--only", "W7"]) == 1
    captured = capsys.readouterr()
    assert "out of coffee" in captured.out and "bench_bad" in captured.err
