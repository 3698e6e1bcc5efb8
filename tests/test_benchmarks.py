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
    # One shape (the others differ only in the update computed), every form of it.
    "benchmarks.bench_writes": {"counts": (3,), "shapes": ("statistics, interleaved",)},
    "benchmarks.bench_scale": {"sizes": (40,)},
    "benchmarks.bench_rng": {"draws": (1,)},
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


@pytest.mark.slow
def test_every_module_runs(results: dict[str, list[dict[str, Any]]]) -> None:
    for name, rows in results.items():
        check_rows(rows)
        assert _harness.format_table(rows), name


@pytest.mark.slow
def test_every_implementation_ran(results: dict[str, list[dict[str, Any]]]) -> None:
    # Flax and Equinox are dev dependencies, so no peer may be n/a here; W1's checks
    # (the tie is one Variable after st.merge and nnx.merge) raise into a NaN row.
    for name in OURS:
        failed = [(r["impl"], r["note"]) for r in results[name] if math.isnan(r["value"])]
        assert not failed, f"{name}: {failed}"


@pytest.mark.slow
def test_split_merge_names_every_peer(results: dict[str, list[dict[str, Any]]]) -> None:
    rows = results["benchmarks.bench_split_merge"]
    impls = {r["impl"] for r in rows}
    assert impls == {"raw JAX (tree_util)", "statetree", "Flax NNX (graph mode)", "Equinox"}
    assert [r["impl"] for r in rows if r["baseline"]] == ["raw JAX (tree_util)"]


@pytest.mark.slow
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

    assert _harness.time_us(fn, quick=True, repeats=2) > 0
    assert len(calls) >= 4  # two warm-up calls, then at least one per repeat
    assert _harness.time_us(lambda: None, quick=True) > 0  # pure Python: nothing to block


def test_time_many_us_interleaves_and_takes_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    # Seconds per repeat from a fake clock: the first of each is the calibration run;
    # then "a" takes 1 s and "b" 3 s, except one slow repeat each (load from elsewhere),
    # which the median ignores.
    seconds = {"a": [1, 1, 1, 9, 1, 1], "b": [3, 3, 3, 3, 30, 3]}

    def fake_run(call: Any, number: int) -> float:
        name = call()
        order.append(name)
        return float(seconds[name].pop(0))

    monkeypatch.setattr(_harness, "_run", fake_run)
    times = _harness.time_many_us({"a": lambda: "a", "b": lambda: "b"}, repeats=5, warmup=0)
    assert times == {"a": 1e6, "b": 3e6}
    assert order == ["a", "b"] * 6  # calibration, then round after round


def test_main_writes_charts_and_results_for_the_docs(
    fake_modules: list[str], tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("matplotlib")
    assert _harness.main(["--quick", "--only", "W8", "--docs", str(tmp_path)]) == 0
    svg = (tmp_path / "w9-fake.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    results = (tmp_path / "results.md").read_text()
    assert results.startswith("# Benchmark results")
    assert "![w9-fake](w9-fake.svg)" in results and "| W9 fake | quick | base |" in results


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
