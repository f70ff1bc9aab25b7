"""The benchmark harness: wrk parsing, CPU accounting, section replacement, and a quick real run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402 - bench/ is a script folder, not a package: importable once on the path
import run  # noqa: E402 - same

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/item
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.21ms  812.00us  15.10ms   80.00%
    Req/Sec    10.01k   500.00    11.00k    70.00%
  Latency Distribution
     50%    3.05ms
     75%    3.50ms
     90%    4.10ms
     99%    1.20s
  19923 requests in 2.00s, 2.93MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   9961.50
Transfer/sec:      1.46MB
"""


def test_parse_wrk_reads_throughput_latency_and_errors() -> None:
    """Every figure the report uses comes out of wrk's text, units converted to ms."""
    result = common.parse_wrk(WRK_OUTPUT)
    assert result.requests == 19923
    assert result.seconds == pytest.approx(2.0)
    assert result.rps == pytest.approx(9961.5)
    assert result.p50_ms == pytest.approx(3.05)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.non_2xx == 7
    assert result.socket_errors == 3


def test_parse_wrk_rejects_output_without_figures() -> None:
    """A wrk failure is an error, not a row of zeros."""
    with pytest.raises(ValueError, match="cannot parse wrk output"):
        common.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_process_cpu_seconds_counts_work() -> None:
    """utime+stime from /proc grows by about the CPU time a busy loop burns."""
    before = common.process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert 0.2 <= common.process_cpu_seconds(os.getpid()) - before <= 1.0


def test_replace_section_keeps_other_sections() -> None:
    """A module's section is replaced between its markers; others and the header stay."""
    document = run.HEADER
    document = run.replace_section(document, "middleware", "## Middleware\nold")
    document = run.replace_section(document, "fanout", "## Fan-out\nfigures")
    document = run.replace_section(document, "middleware", "## Middleware\nnew")
    assert document.startswith("# Benchmarks")
    assert "old" not in document
    assert document.count("<!-- bench:middleware -->") == 1
    assert "<!-- bench:middleware -->\n## Middleware\nnew\n<!-- /bench:middleware -->" in document
    assert "<!-- bench:fanout -->\n## Fan-out\nfigures\n<!-- /bench:fanout -->" in document
    assert document.index("bench:middleware") < document.index("bench:fanout")
    document = run.replace_section(document, "rotation", "## Rotation")
    assert (
        document.index("bench:middleware")
        < document.index("bench:rotation")
        < document.index("bench:fanout")
    )


def test_rotating_script_refuses_unsafe_header_values(tmp_path: Path) -> None:
    """Header values are embedded in Lua source: a quote or newline must not get in."""
    with pytest.raises(ValueError, match="header-safe"):
        common.write_rotating_script(tmp_path / "x.lua", "/", [{"Authorization": 'a"b'}])


def test_unknown_benchmark_name_is_a_usage_error() -> None:
    """`--only nosuch` says what exists instead of running nothing."""
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run.py"), "--only", "nosuch"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown benchmark nosuch" in done.stderr
    assert "middleware" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench does)")
def test_quick_middleware_benchmark_writes_its_section(tmp_path: Path) -> None:
    """`run.py --quick --only middleware` measures all four variants and writes its section."""
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(
        "# Benchmarks\n\n<!-- bench:middleware -->\nstale\n<!-- /bench:middleware -->\n"
    )
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run.py"), "--quick", "--only", "middleware",
         "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    assert "stale" not in text
    for variant in ("(a) no middleware", "(b) pure-ASGI", "(c) TokenRevocationMiddleware", "(d)"):
        assert variant in text
    assert "Requests not answered 200: 0." in text
    # (c) runs warm and cold, in each check mode: the round-trip rows are the ones read here.
    assert "| warm | redis |" in text
    assert "| cold | redis |" in text
    rows = {
        line[3]: line
        for line in text.splitlines()
        if line.startswith("| (") and "| mirror |" not in line
    }
    # (c): one EVALSHA per request, its reads inside it (a stray command of the servers' start
    # or stop, such as a mirror-mode row's last feed read, may add a thousandth); (d): one GET
    # or HGET per rule.
    assert re.search(r"\| 1\.00\d \(EVALSHA 1\.000, GET ", rows["c"]), rows["c"]
    assert re.search(r"\bMGET\b", rows["c"]) is None  # one script call, not an MGET
    assert "(GET " in rows["d"]
    assert "EVALSHA" not in rows["d"]
    # (a) sends nothing; the mirror-mode servers' feed followers, running beside it, may add a
    # few thousandths (INFO commandstats is server-wide), never a command per request.
    assert re.search(r"\| (0|0\.00\d \([^|]*\)) \|", rows["a"]), rows["a"]
    assert "EVALSHA" not in rows["a"]
