"""Timing, discovery and the one results table shared by every benchmark module.

A workload lives in a module ``benchmarks/bench_<name>.py`` whose docstring starts with
its id (``"W1: ..."``) and which exposes ``run(quick: bool) -> list[dict]``. Each row is
a dict with the keys ``workload``, ``case``, ``impl``, ``value`` (float), ``unit`` and
``baseline`` (bool, one per workload+case); ``note`` is optional. :func:`main` finds the
modules, runs them all in this one process and prints one table in which every row's
value is also shown as a ratio to its workload+case baseline.
"""

import argparse
import datetime
import gc
import importlib
import math
import os
import pathlib
import pkgutil
import platform
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from benchmarks import _charts

__all__ = ["row", "time_us", "time_many_us", "discover", "format_table", "environment", "main"]

KEYS = ("workload", "case", "impl", "value", "unit", "baseline")
FAILED = "(module failed)"  # the impl of the one row a module that raised gets


def row(
    workload: str,
    case: str,
    impl: str,
    value: float,
    unit: str,
    *,
    baseline: bool = False,
    note: str = "",
) -> dict[str, Any]:
    """One result row, in the shape every benchmark module returns."""
    return {
        "workload": workload,
        "case": case,
        "impl": impl,
        "value": float(value),
        "unit": unit,
        "baseline": baseline,
        "note": note,
    }


def time_us(fn: Callable[[], Any], *, quick: bool = False, repeats: int | None = None) -> float:
    """Microseconds per call of ``fn()``: :func:`time_many_us` for one function."""
    (us,) = time_many_us({"fn": fn}, quick=quick, repeats=repeats).values()
    return us


def time_many_us(
    fns: Mapping[str, Callable[[], Any]],
    *,
    quick: bool = False,
    repeats: int | None = None,
    warmup: int = 2,
) -> dict[str, float]:
    """The one timer of every benchmark: microseconds per call of each function.

    Each function is called ``warmup`` times first (compilation, caches). Then, round
    after round, each function in turn runs one *repeat*: ``number`` calls in a row, as
    many as make the repeat last ``MIN_REPEAT_S`` (``timeit``-style), each call's result
    passed to ``jax.block_until_ready`` so that asynchronous dispatch is not mistaken for
    speed (a function timing pure-Python work returns None: nothing to walk).
    Interleaving means a burst of load from elsewhere on the machine slows every
    function alike, so the ratios hold. The figure is the **median** over the repeats of
    wall time per call (``time.perf_counter``); the garbage collector is off while timing.
    """
    repeats = repeats if repeats is not None else (3 if quick else 15)
    min_repeat_s = MIN_REPEAT_S / 4 if quick else MIN_REPEAT_S
    calls = {name: (lambda fn=fn: jax.block_until_ready(fn())) for name, fn in fns.items()}
    for call in calls.values():
        for _ in range(warmup):
            call()
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        numbers = {name: _calibrate(call, min_repeat_s) for name, call in calls.items()}
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                samples[name].append(_run(call, numbers[name]) / numbers[name])
    finally:
        if collecting:
            gc.enable()
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


MIN_REPEAT_S = 0.02  # one repeat lasts at least this long (a quarter of it with --quick)


def _calibrate(call: Callable[[], Any], min_repeat_s: float) -> int:
    """How many calls in a row make one repeat last at least ``min_repeat_s``."""
    number = 1
    while True:
        elapsed = _run(call, number)
        if elapsed >= min_repeat_s or number >= 1 << 20:
            return number
        number *= max(2, min(10, int(min_repeat_s / max(elapsed, 1e-9)) + 1))


def _run(call: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        call()
    return time.perf_counter() - start


# --- discovery -------------------------------------------------------------------------


def discover() -> list[str]:
    """Names of every ``benchmarks.bench_*`` module, sorted."""
    here = pathlib.Path(__file__).parent
    return [
        f"benchmarks.{info.name}"
        for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name)
        if info.name.startswith("bench_")
    ]


def _labels(module: Any) -> set[str]:
    """What ``--only`` may name a module by: its short name and its workload id."""
    short = module.__name__.rsplit(".", 1)[-1].removeprefix("bench_")
    labels = {short.lower()}
    doc = (module.__doc__ or "").strip()
    if doc:
        labels.add(doc.split()[0].rstrip(":.,").lower())  # "W1: ..." -> "w1"
    return labels


def _run_module(name: str, quick: bool) -> list[dict[str, Any]]:
    """The module's rows; a module that fails gives one NaN row saying why."""
    try:
        rows = importlib.import_module(name).run(quick)
        for r in rows:
            missing = [k for k in KEYS if k not in r]
            if missing:
                raise ValueError(f"row {r!r} lacks keys {missing}")
        return rows
    except Exception as e:  # one broken module must not hide the others' results
        traceback.print_exc(file=sys.stderr)
        short = name.rsplit(".", 1)[-1]
        why = f"{type(e).__name__}: {e}".splitlines()[0][:120]
        return [row(short, "-", FAILED, math.nan, "", baseline=True, note=why)]


def collect(only: Sequence[str], quick: bool) -> list[dict[str, Any]]:
    """Run the selected modules (all if ``only`` is empty) and return all their rows.

    A module is selected when a token names it (``split_merge``) or its workload id
    (``W1``, from the first word of its docstring). Tokens that select no module are
    matched against the rows' workload names after running every module.
    """
    names = discover()
    if not only:
        return [r for n in names for r in _run_module(n, quick)]
    tokens = {t.strip().lower() for t in only if t.strip()}
    chosen, unmatched = [], set(tokens)
    for n in names:
        try:
            labels = _labels(importlib.import_module(n))
        except Exception:
            labels = {n.rsplit(".", 1)[-1].removeprefix("bench_").lower()}
        hits = tokens & labels
        if hits:
            chosen.append(n)
            unmatched -= hits
    if unmatched:  # fall back to the workload names the rows carry
        rest = [r for n in names if n not in chosen for r in _run_module(n, quick)]
        keep = [r for r in rest if any(r["workload"].lower().startswith(t) for t in unmatched)]
    else:
        keep = []
    return [r for n in chosen for r in _run_module(n, quick)] + keep


# --- the table -------------------------------------------------------------------------

HEADER = ("workload", "case", "implementation", "value", "vs baseline", "note")


def _fmt_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}".rstrip()


def _fmt_ratio(value: float, base: float | None, is_base: bool) -> str:
    if is_base:
        return "1.00x (base)"
    if base is None or math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    ratio = value / base
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


def table_rows(rows: Iterable[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Cells per row: grouped by workload+case in first-seen order, baseline first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["case"]), []).append(r)
    cells = []
    # Workloads in id order (W1, W2, ..., W10), cases as their modules gave them.
    ordered = sorted(groups.items(), key=lambda item: _workload_order(item[0][0]))
    for (workload, case), group in ordered:
        group = sorted(group, key=lambda r: not r["baseline"])  # stable: baseline first
        base = group[0]["value"] if group[0]["baseline"] else None
        for r in group:
            cells.append(
                (
                    workload,
                    case,
                    r["impl"],
                    _fmt_value(r["value"], r["unit"]),
                    _fmt_ratio(r["value"], base, r["baseline"]),
                    r.get("note", ""),
                )
            )
    return cells


def _workload_order(workload: str) -> tuple[int, str]:
    match = re.match(r"W(\d+)", workload)
    return (int(match.group(1)) if match else 1 << 30, workload)


def format_table(rows: Iterable[dict[str, Any]], *, markdown: bool = False) -> str:
    """One table of all rows with each value's ratio to its baseline; text or Markdown."""
    cells = _blank_repeats(table_rows(rows))
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(HEADER)]
    right = {3, 4}  # numbers line up on the right

    def line(r: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    out = [line(HEADER), "  ".join("-" * w for w in widths)]
    for i, r in enumerate(cells):
        if r[0] and i:
            out.append("")  # a blank line between workloads
        out.append(line(r))
    return "\n".join(out)


def _blank_repeats(cells: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Name each workload and case once; the rows below it belong to it."""
    out, previous = [], ("", "")
    for r in cells:
        out.append(
            ("" if r[0] == previous[0] else r[0], "" if r[:2] == previous[:2] else r[1], *r[2:])
        )
        previous = r
    return out


def environment() -> str:
    """One line naming the date, machine and software the numbers were taken on."""
    device = jax.devices()[0]
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores; "
        f"JAX {jax.__version__} on {device.platform.upper()} ({device.device_kind}); "
        f"Python {platform.python_version()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run every benchmarks/bench_*.py workload and print one table.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--only", default="", help="comma-separated workload ids or names, e.g. W1,W3"
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    parser.add_argument(
        "--docs",
        metavar="FOLDER",
        help="also write the Markdown table (results.md) and one SVG chart per workload "
        "into FOLDER (docs/performance for the docs page; needs matplotlib)",
    )
    args = parser.parse_args(argv)
    only = [t for t in args.only.split(",") if t.strip()]
    rows = collect(only, args.quick)
    env = environment()
    print(env + (" (--quick)" if args.quick else ""))
    print()
    print(format_table(rows))
    if args.markdown:
        text = f"Measured {env}{' with --quick' if args.quick else ''}.\n\n"
        text += format_table(rows, markdown=True) + "\n"
        pathlib.Path(args.markdown).write_text(text)
        print(f"\nMarkdown table written to {args.markdown}")
    if args.docs:
        folder = pathlib.Path(args.docs)
        names = _charts.write_charts(rows, folder, env)
        text = f"# Benchmark results\n\nMeasured {env}{' with --quick' if args.quick else ''}.\n\n"
        text += "\n".join(f"![{n[:-4]}]({n})" for n in names) + "\n\n"
        text += format_table(rows, markdown=True) + "\n"
        (folder / "results.md").write_text(text)
        print(f"\nCharts and table written to {folder}")
    failed = [r["workload"] for r in rows if r["impl"] == FAILED]
    if failed:
        print(f"\nFailed modules (traceback above): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
