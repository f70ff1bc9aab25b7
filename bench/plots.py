"""The benchmark figures: PNGs drawn from the raw results the bench modules saved.

``bench/run.py`` calls :func:`draw_all` after the benchmarks ran, so each figure comes from the
same run as its table (the module's ``bench/results/<name>.json``, via ``run.save_results``); it
also runs alone, redrawing from the saved results::

    .venv/bin/python bench/plots.py                    # bench/results -> docs/bench
    .venv/bin/python bench/plots.py --results DIR --out DIR

matplotlib (the ``bench`` extra) draws with the Agg backend: no display needed. A figure whose
results are missing is skipped. Every figure states the machine and the date of its run.

The results each figure reads (``data`` of the saved file):

``fanout``
    ``rounds``: ``[{"workers", "sessions", "sessions_per_s", "enforcement_ms": {size: ms}}]``
    (``size`` a tenant's session count, as a string); ``timelines``: ``[{"workers",
    "enqueued", "job_started", "job_finished", "samples": [[unix s, latency s], ...]}]``, the
    steady checker's samples around one fan-out.
``middleware``
    ``rows``: ``[{"variant", "state": "cold"|"warm"|"none", "mode": str|null, "rps": [per
    round]}]``, one per server of the run (``none``: a variant without a verify cache).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

BENCH_DIR = Path(__file__).resolve().parent
#: Window of the check-latency timeline (seconds).
WINDOW_S = 0.1
_SIZE = (7.5, 4.2)
_DPI = 110


@dataclass(frozen=True)
class Drawn:
    """One figure written: its file, title and caption (machine and date)."""

    path: Path
    title: str
    caption: str


def load(results_dir: Path, name: str) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    if not path.is_file():
        return None
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def caption(result: dict[str, Any]) -> str:
    quick = " (--quick: small sizes)" if result.get("quick") else ""
    return f"Measured {result['measured']} on {result['machine']}{quick}."


def _thousands(value: float, _pos: int) -> str:
    return f"{value:,.0f}"


def _new(title: str, result: dict[str, Any]) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI, layout="constrained")
    ax.set_title(title, fontsize=11)
    fig.text(0.01, 0.005, caption(result), fontsize=7, color="#444", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.25)  # type: ignore[union-attr]
    ax.grid(True, alpha=0.3)
    return fig, ax


# --- fan-out ----------------------------------------------------------------------------------


def enforcement_figure(result: dict[str, Any]) -> Figure:
    """Time from enqueue returning to the first 401, against the tenant's size."""
    fig, ax = _new("Time to the first 401 after a tenant revocation returns", result)
    by_size: dict[int, list[float]] = {}
    for round_ in result["data"]["rounds"]:
        for size, ms in round_["enforcement_ms"].items():
            by_size.setdefault(int(size), []).append(float(ms))
    sizes = sorted(by_size)
    for size in sizes:
        ax.scatter([size] * len(by_size[size]), by_size[size], color="#1f77b4", alpha=0.5, s=18)
    ax.plot(
        sizes,
        [statistics.median(by_size[s]) for s in sizes],
        marker="o",
        color="#1f77b4",
        label="median (dots: each round)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("sessions in the tenant (log scale)")
    ax.set_ylabel("enqueue returned → first 401 (ms)")
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def fanout_rate_figure(result: dict[str, Any]) -> Figure:
    """Sessions revoked per second against the number of worker processes."""
    fig, ax = _new("Fan-out throughput by worker processes", result)
    by_workers: dict[int, list[float]] = {}
    for round_ in result["data"]["rounds"]:
        # Comparable rounds only: unfiltered jobs at full speed (filtered and paced ones walk
        # the same sessions at other rates).
        if round_.get("kind", "unfiltered") != "unfiltered" or round_.get("duty", 1.0) < 1:
            continue
        by_workers.setdefault(int(round_["workers"]), []).append(float(round_["sessions_per_s"]))
    workers = sorted(by_workers)
    medians = [statistics.median(by_workers[w]) for w in workers]
    ax.bar(workers, medians, width=0.5, color="#2ca02c", alpha=0.8, label="median")
    for w in workers:
        ax.scatter([w] * len(by_workers[w]), by_workers[w], color="black", s=14, zorder=3)
    for w, m in zip(workers, medians, strict=True):
        ax.annotate(f"{m:,.0f}", (w, m), ha="center", va="bottom", fontsize=8)
    sessions = max(int(r["sessions"]) for r in result["data"]["rounds"])
    ax.set_xticks(workers)
    ax.set_xlabel(f"Celery worker processes (unfiltered job, one tenant of {sessions:,} sessions)")
    ax.set_ylabel("sessions revoked per second (sessions/s)")
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.legend(["median (dots: each round)"], loc="upper left", fontsize=8)
    return fig


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_timeline_figure(result: dict[str, Any]) -> Figure:
    """A check's p50 and p99 per 100 ms window around one fan-out, job start and end marked."""
    timelines = result["data"]["timelines"]
    # The round with the most workers (the heaviest load on Redis), its first repeat.
    timeline = max(timelines, key=lambda t: int(t["workers"]))
    fig, ax = _new(
        f"Check latency during a fan-out ({timeline['workers']} worker processes)", result
    )
    t0 = float(timeline["enqueued"])
    windows: dict[int, list[float]] = {}
    for at, latency in timeline["samples"]:
        windows.setdefault(math.floor((float(at) - t0) / WINDOW_S), []).append(float(latency))
    keys = sorted(windows)
    xs = [(k + 0.5) * WINDOW_S for k in keys]
    ax.plot(xs, [_percentile(windows[k], 0.50) * 1000 for k in keys], label="p50", lw=1.2)
    ax.plot(xs, [_percentile(windows[k], 0.99) * 1000 for k in keys], label="p99", lw=1.2)
    marks = [
        (0.0, "enqueued", "#555", "right"),
        (timeline.get("job_started"), "job started", "#2ca02c", "left"),
        (timeline.get("job_finished"), "job finished", "#d62728", "left"),
    ]
    for at, label, colour, side in marks:
        if at is None:
            continue
        x = at if label == "enqueued" else float(at) - t0
        ax.axvline(x, color=colour, ls="--", lw=1)
        # Enqueue and start are milliseconds apart: their labels sit on either side of the lines.
        ax.annotate(
            f" {label} ",
            (x, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha=side,
            fontsize=8,
            color=colour,
        )
    ax.set_xlabel(f"time since the job was enqueued (s), {WINDOW_S * 1000:.0f} ms windows")
    ax.set_ylabel("store.is_revoked latency (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    return fig


# --- middleware -----------------------------------------------------------------------------------


def middleware_figure(result: dict[str, Any]) -> Figure:
    """Requests per second of each server of the run: every variant, (c) cold and warm in each
    check mode; variants without a verify cache are cold and warm at once."""
    rows = result["data"]["rows"]
    style = {
        "cold": {"hatch": "///", "color": "#4c72b0", "label": "cold (every request verified)"},
        "warm": {"hatch": "", "color": "#dd8452", "label": "warm (verify cache hit)"},
        "none": {"hatch": "..", "color": "#8c8c8c", "label": "no verify cache (cold = warm)"},
    }
    labels = []
    for row in rows:
        label = row["variant"]
        if row["state"] in ("cold", "warm"):
            label += f", {row['state']}"
        if row.get("mode"):
            label += f", {row['mode']} mode"
        labels.append(label)
    height = 1.4 + 0.42 * len(rows)
    fig, ax = plt.subplots(figsize=(_SIZE[0] + 1.5, height), dpi=_DPI, layout="constrained")
    ax.set_title("Middleware throughput per variant, cold and warm", fontsize=11)
    fig.text(0.01, 0.005, caption(result), fontsize=7, color="#444", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.25)  # type: ignore[union-attr]
    ax.grid(True, axis="x", alpha=0.3)
    medians = [statistics.median(row["rps"]) for row in rows]
    seen: set[str] = set()
    for y, (row, median) in enumerate(zip(rows, medians, strict=True)):
        look = style.get(row["state"], style["none"])
        legend = look["label"] if row["state"] not in seen else "_nolegend_"
        seen.add(row["state"])
        ax.barh([y], [median], height=0.7, hatch=look["hatch"], color=look["color"],
                edgecolor="white", label=legend)  # fmt: skip
        ax.scatter(row["rps"], [y] * len(row["rps"]), color="black", s=6, zorder=3)
        # The median's figure right of the bar and of its rounds' dots, so none covers it.
        ax.text(max(median, *row["rps"]), y, f"  {median:,.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)  # room for the bar labels
    ax.set_xlabel("requests per second (req/s; bar: median, dots: each round)")
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.legend(loc="lower right", fontsize=7)
    return fig


# --- all of them ----------------------------------------------------------------------------------

#: (file stem, results name, title, drawing function, the data key it needs).
FIGURES: list[tuple[str, str, str, Callable[[dict[str, Any]], Figure], str]] = [
    ("enforcement-vs-tenant-size", "fanout", "Time to the first 401 against tenant size",
     enforcement_figure, "rounds"),
    ("fanout-vs-workers", "fanout", "Fan-out sessions/s against worker processes",
     fanout_rate_figure, "rounds"),
    ("check-latency-during-fanout", "fanout", "Check latency (p50, p99 per 100 ms) during a "
     "fan-out", check_timeline_figure, "timelines"),
    ("middleware-throughput", "middleware", "Middleware throughput per variant, cold and warm",
     middleware_figure, "rows"),
]  # fmt: skip


def draw_all(results_dir: Path, figures_dir: Path) -> list[Drawn]:
    """Draw every figure whose results are saved; returns what was written."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[Drawn] = []
    for stem, name, title, draw, needs in FIGURES:
        result = load(results_dir, name)
        if result is None or not result["data"].get(needs):
            print(f"  plots: no {name} results with {needs!r}: {stem} not drawn", file=sys.stderr)
            continue
        fig = draw(result)
        path = figures_dir / f"{stem}.png"
        # No timestamp or software version inside the file: the same results give the same PNG.
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        drawn.append(Drawn(path, title, caption(result)))
    return drawn


def markdown(figures: list[Drawn], relative_to: Path) -> str:
    """The BENCHMARKS.md section embedding ``figures`` (paths relative to the document)."""
    parts = [
        "## Figures",
        "",
        "Drawn by `bench/plots.py` from the raw results of the run that wrote the tables above "
        "(`bench/results/*.json`).",
    ]
    for figure in figures:
        where = os.path.relpath(figure.path, relative_to)
        parts += ["", f"![{figure.title}]({where})", "", f"*{figure.title}.* {figure.caption}"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--out", type=Path, default=BENCH_DIR.parent / "docs" / "bench")
    args = parser.parse_args(argv)
    for figure in draw_all(args.results, args.out):
        print(figure.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
