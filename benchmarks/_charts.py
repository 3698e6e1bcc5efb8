"""Charts of one benchmark run: one SVG per workload, every value as its ratio to the
baseline of its case (log scale, 1x marked), written where the docs include them.

Needs matplotlib (the ``bench`` extra); :func:`write_charts` says so when it is missing.
"""

import math
import pathlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["write_charts", "slug"]


def slug(workload: str) -> str:
    """A file name for a workload: ``"W2 in-place adam step"`` -> ``"w2-in-place-adam-step"``."""
    return re.sub(r"[^a-z0-9]+", "-", workload.lower()).strip("-")


def _order(workload: str) -> tuple[int, str]:
    """Workloads in id order (W1, W2, ..., W10), as the table lists them."""
    match = re.match(r"W(\d+)", workload)
    return (int(match.group(1)) if match else 1 << 30, workload)


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per case, per implementation: the value over the case's baseline value."""
    base = {r["case"]: r["value"] for r in rows if r["baseline"]}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        b = base.get(r["case"])
        if b and not math.isnan(r["value"]) and not math.isnan(b) and r["value"] > 0:
            out.setdefault(r["case"], {})[r["impl"]] = r["value"] / b
    return out


def write_charts(rows: Iterable[dict[str, Any]], folder: pathlib.Path, note: str) -> list[str]:
    """One ``<slug>.svg`` per workload in ``folder``; returns the file names written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(
            "Charts need matplotlib: pip install 'statetree[bench]' (or drop --docs)."
        ) from e
    folder.mkdir(parents=True, exist_ok=True)
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_workload.setdefault(r["workload"], []).append(r)
    written = []
    for workload, group in sorted(by_workload.items(), key=lambda item: _order(item[0])):
        ratios = _ratios(group)
        if not ratios:
            continue
        impls = list(dict.fromkeys(r["impl"] for r in group))
        cases = list(ratios)
        height = 0.8 / max(1, len(impls))
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * len(cases) * len(impls)))
        for j, impl in enumerate(impls):
            ys = [i + j * height for i in range(len(cases))]
            xs = [ratios[c].get(impl, math.nan) for c in cases]
            ax.barh(ys, xs, height=height, label=impl)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))], cases)
        ax.invert_yaxis()
        ax.set_xlabel("time (or bytes) relative to the case's baseline; lower is better")
        ax.set_title(f"{workload}\n{note}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        name = f"{slug(workload)}.svg"
        fig.savefig(folder / name, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(name)
    return written
