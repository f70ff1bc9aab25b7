"""bench/plots.py: the benchmark figures, drawn from the raw results bench/run.py saves.

Synthetic results stand in for a run (the benchmarks themselves are the lead's ``make bench``);
what is checked is that every figure is drawn from the saved data, labelled with units, captioned
with the machine and date, embedded in BENCHMARKS.md, and skipped cleanly when its data is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_DIR))

import plots  # noqa: E402 - bench/ is a script folder, importable once on the path
import run  # noqa: E402 - same

PNG = b"\x89PNG\r\n\x1a\n"


def fanout_data() -> dict[str, Any]:
    t0 = 1_700_000_000.0
    samples = [[t0 - 2 + i * 0.002, 0.0004 + (0.002 if 800 < i < 2500 else 0)] for i in range(4000)]
    return {
        "rounds": [
            {"workers": w, "sessions": 1_000_001, "sessions_per_s": 100_000.0 * w + r,
             "enforcement_ms": {"10": 1.2 + r, "1000001": 1.4 + r}}
            for w in (1, 2) for r in (0, 1)
        ],
        "timelines": [
            {"workers": 2, "enqueued": t0, "samples": samples, "job_started": t0 + 0.1,
             "job_finished": t0 + 3.0}
        ],
    }  # fmt: skip


def middleware_data() -> dict[str, Any]:
    def row(variant: str, state: str, mode: str | None, rps: float) -> dict[str, Any]:
        return {"variant": variant, "state": state, "mode": mode, "rps": [rps, rps * 1.1]}

    return {
        "rows": [
            row("(a) no middleware", "none", None, 14000.0),
            row("(b) verify only", "none", None, 5000.0),
            row("(c) shipped", "warm", "redis", 6400.0),
            row("(c) shipped", "cold", "redis", 5200.0),
            row("(c) shipped", "warm", "mirror", 12000.0),
            row("(c) shipped", "cold", "mirror", 6000.0),
            row("(d) naive", "none", None, 900.0),
        ]
    }


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A results directory holding a fan-out and a middleware result, saved as run.py does."""
    monkeypatch.setattr(run, "RESULTS_DIR", tmp_path / "results")
    run.save_results("fanout", fanout_data())
    run.save_results("middleware", middleware_data(), quick=True)
    return tmp_path / "results"


def test_save_results_records_when_and_where(results: Path) -> None:
    """A saved result carries its data, the UTC date and the machine, and whether it was quick."""
    saved = json.loads((results / "middleware.json").read_text())
    assert saved["data"] == middleware_data()
    assert saved["measured"].endswith(" UTC")
    assert "nproc" in saved["machine"]
    assert saved["quick"] is True


def test_every_figure_is_drawn_and_embedded(results: Path, tmp_path: Path) -> None:
    """Four PNGs from the saved results; the BENCHMARKS.md section embeds each with its caption."""
    drawn = plots.draw_all(results, tmp_path / "docs" / "bench")
    assert [d.path.name for d in drawn] == [
        "enforcement-vs-tenant-size.png",
        "fanout-vs-workers.png",
        "check-latency-during-fanout.png",
        "middleware-throughput.png",
    ]
    for figure in drawn:
        assert figure.path.read_bytes().startswith(PNG)
        assert figure.path.stat().st_size > 10_000
    machine = json.loads((results / "fanout.json").read_text())["machine"]
    section = plots.markdown(drawn, tmp_path)
    assert section.startswith("## Figures")
    assert "![Fan-out sessions/s against worker processes](docs/bench/fanout-vs-workers.png)" in (
        section
    )
    assert section.count(machine) == 4
    assert "(--quick: small sizes)" in section  # the middleware result was a quick one


def test_same_results_same_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure depends on its results only (no timestamp inside): redrawing changes no byte,
    and other results give another image."""
    monkeypatch.setattr(run, "RESULTS_DIR", tmp_path / "results")
    run.save_results("middleware", middleware_data())
    (first,) = plots.draw_all(tmp_path / "results", tmp_path / "a")
    (second,) = plots.draw_all(tmp_path / "results", tmp_path / "b")
    assert first.path.read_bytes() == second.path.read_bytes()
    changed = middleware_data()
    changed["rows"][0]["rps"] = [5.0, 6.0]
    run.save_results("middleware", changed)
    (third,) = plots.draw_all(tmp_path / "results", tmp_path / "c")
    assert third.path.read_bytes() != first.path.read_bytes()


def test_axes_name_their_units(results: Path) -> None:
    """Every axis says what it measures and in which unit."""
    fanout = plots.load(results, "fanout")
    middleware = plots.load(results, "middleware")
    assert fanout is not None
    assert middleware is not None
    labels = {
        "enforcement": plots.enforcement_figure(fanout),
        "rate": plots.fanout_rate_figure(fanout),
        "timeline": plots.check_timeline_figure(fanout),
        "middleware": plots.middleware_figure(middleware),
    }
    ax = {name: fig.axes[0] for name, fig in labels.items()}
    assert "sessions in the tenant" in ax["enforcement"].get_xlabel()
    assert "(ms)" in ax["enforcement"].get_ylabel()
    assert "worker processes" in ax["rate"].get_xlabel()
    assert "(sessions/s)" in ax["rate"].get_ylabel()
    assert "(s)" in ax["timeline"].get_xlabel()
    assert "(ms)" in ax["timeline"].get_ylabel()
    assert "req/s" in ax["middleware"].get_xlabel()
    # The timeline marks the job: enqueued at 0, started and finished where the job record says.
    xs = sorted(
        line.get_xdata()[0] for line in ax["timeline"].lines if line.get_linestyle() == "--"
    )
    assert xs == pytest.approx([0.0, 0.1, 3.0])
    # One bar per server; cold and warm told apart by their labels and hatching, not colour alone.
    ticks = [t.get_text() for t in ax["middleware"].get_yticklabels()]
    assert ticks == [
        "(a) no middleware",
        "(b) verify only",
        "(c) shipped, warm, redis mode",
        "(c) shipped, cold, redis mode",
        "(c) shipped, warm, mirror mode",
        "(c) shipped, cold, mirror mode",
        "(d) naive",
    ]
    legend = [t.get_text() for t in ax["middleware"].get_legend().get_texts()]
    assert legend == [
        "no verify cache (cold = warm)",
        "warm (verify cache hit)",
        "cold (every request verified)",
    ]
    hatches = {bar.get_hatch() for bar in ax["middleware"].patches}
    assert {"///", "..", None} <= hatches or {"///", ".."} <= hatches


def test_missing_results_skip_their_figures(tmp_path: Path) -> None:
    """Without a module's results its figures are skipped, the others still drawn."""
    (tmp_path / "results").mkdir()
    assert plots.draw_all(tmp_path / "results", tmp_path / "out") == []
    run.RESULTS_DIR = tmp_path / "results"
    try:
        run.save_results("middleware", middleware_data())
    finally:
        run.RESULTS_DIR = BENCH_DIR / "results"
    drawn = plots.draw_all(tmp_path / "results", tmp_path / "out")
    assert [d.path.name for d in drawn] == ["middleware-throughput.png"]


def test_run_embeds_the_figures_in_its_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the benchmarks, run.py draws the figures and writes BENCHMARKS.md's figures section."""
    monkeypatch.setattr(run, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(run, "FIGURES_DIR", tmp_path / "figures")
    run.save_results("middleware", middleware_data())
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(
        "# Benchmarks\n\n<!-- bench:middleware -->\n## M\n<!-- /bench:middleware -->\n"
    )
    assert run.draw_figures(output, write=True)
    text = output.read_text()
    assert "<!-- bench:figures -->\n## Figures" in text
    assert text.index("bench:middleware") < text.index("bench:figures")
    assert "](figures/middleware-throughput.png)" in text


def test_the_bench_modules_save_what_the_figures_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fanout's and middleware's save_raw write the results the figures are drawn from."""
    import fanout
    import middleware

    monkeypatch.setattr(run, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(fanout, "TIMELINES", [])
    t0 = 1_700_000_000.0
    job = type("Job", (), {"started_at": t0 + 0.05, "finished_at": t0 + 2.0})()
    rounds = []
    for workers in (1, 2):
        rounds.append(
            fanout.Round(
                kind=fanout.UNFILTERED, workers=workers, sessions=1001, wall_s=1.0 / workers,
                job_span_s=0.9,
                revoked=1001, writes=10, by_command={}, usec_by_command={},
                enforcement_big_ms=1.5, enforcement_small_ms=1.1,
            )
        )  # fmt: skip
        samples = [(t0 - 1 + i * 0.01, 0.001) for i in range(400)]
        fanout.TIMELINES.append(fanout.timeline(workers, t0, samples, job))
    fanout.save_raw(rounds, quick=True)
    sample = middleware.Samples()
    sample.rps.extend([900.0, 1000.0])
    plan = [s for s in middleware.setups(("redis",)) if s.letter == "c"]
    middleware.save_raw(plan, {setup.key: sample for setup in plan}, quick=True)
    saved = json.loads((tmp_path / "results" / "fanout.json").read_text())["data"]
    assert saved["rounds"][1]["sessions_per_s"] == pytest.approx(2002.0)
    assert saved["rounds"][0]["enforcement_ms"] == {"10": 1.1, "1001": 1.5}
    assert saved["timelines"][1]["job_finished"] == t0 + 2.0
    rows = json.loads((tmp_path / "results" / "middleware.json").read_text())["data"]["rows"]
    assert rows == [
        {"variant": "(c) TokenRevocationMiddleware as shipped", "state": state, "mode": "redis",
         "rps": [900.0, 1000.0]}
        for state in ("warm", "cold")
    ]  # fmt: skip
    # What the figures read is there (drawing itself is test_every_figure_is_drawn_and_embedded's).
    fanout_result = plots.load(tmp_path / "results", "fanout")
    assert fanout_result is not None
    for draw in (plots.enforcement_figure, plots.fanout_rate_figure, plots.check_timeline_figure):
        plots.plt.close(draw(fanout_result))
