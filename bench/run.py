"""Run the benchmarks and write their sections into BENCHMARKS.md (``make bench``).

Each benchmark is a module ``bench/<name>.py`` with ``run(quick: bool = False) -> str`` returning
a Markdown section that starts with ``## ``. The modules run in ``ORDER`` (those that exist), and
each section replaces the text between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``
in BENCHMARKS.md; a section without markers yet is appended.

A module also hands the raw figures behind its table to :func:`save_results`
(``bench/results/<name>.json``); ``bench/plots.py`` draws the PNGs under ``docs/bench/`` from
those files after the run, so each figure comes from the same run as its table, and BENCHMARKS.md
gets a ``figures`` section embedding them. With ``--no-write`` both go to a temporary directory.

    .venv/bin/python bench/run.py                 # everything, full size
    .venv/bin/python bench/run.py --quick         # everything, small and fast
    .venv/bin/python bench/run.py --only middleware --only fanout
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if __name__ == "__main__":
    # Bench modules `import run` for save_results: let them get this module, not a second copy
    # with its own RESULTS_DIR.
    sys.modules.setdefault("run", sys.modules[__name__])

#: Where save_results writes (bench/results, gitignored; a temporary directory with --no-write).
RESULTS_DIR = BENCH_DIR / "results"
#: Where the figures go: committed, embedded by BENCHMARKS.md and the README.
FIGURES_DIR = BENCH_DIR.parent / "docs" / "bench"


def machine_line() -> str:
    """The machine a result was measured on (CPU model, cores, Python), for figure captions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}"


def save_results(name: str, data: dict[str, Any], *, quick: bool = False) -> Path:
    """Save a benchmark's raw figures (``RESULTS_DIR/<name>.json``) for bench/plots.py.

    ``data`` is the module's own (documented in bench/plots.py); the file adds when and where
    it was measured, which every figure states in its caption.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "name": name,
        "measured": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "quick": quick,
        "data": data,
    }
    path.write_text(json.dumps(document))
    return path


ORDER = ("middleware", "mirror", "rotation", "fanout", "durability", "events")
DEFAULT_OUTPUT = BENCH_DIR.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Written by `make bench` (`bench/run.py`); each section is replaced by the module that measured it,
between its `<!-- bench:NAME -->` markers. Figures depend on the machine and on what else it was
running: compare ratios measured in the same run, not absolute numbers across runs.
"""


def available() -> list[str]:
    return [name for name in ORDER if (BENCH_DIR / f"{name}.py").is_file()]


def replace_section(document: str, name: str, section: str) -> str:
    """``document`` with ``name``'s marked section replaced by ``section``.

    A new section goes before the first section that comes after it in ``ORDER`` (else at the
    end), so the file reads in the order the benchmarks run.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    later = ORDER[ORDER.index(name) + 1 :] if name in ORDER else ()
    positions = [document.find(f"<!-- bench:{other} -->") for other in later]
    found = [p for p in positions if p >= 0]
    if found:
        at = min(found)
        return document[:at] + block + "\n\n" + document[at:]
    return document.rstrip("\n") + "\n\n" + block + "\n"


def write_section(path: Path, name: str, section: str) -> None:
    document = path.read_text() if path.exists() else HEADER
    path.write_text(replace_section(document, name, section))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast rounds")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this benchmark (repeatable); one of: {', '.join(ORDER)}",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the sections instead of writing them"
    )
    args = parser.parse_args(argv)
    global RESULTS_DIR, FIGURES_DIR
    if args.no_write:
        # A proving run must not replace the real run's data or figures.
        RESULTS_DIR = FIGURES_DIR = Path(tempfile.mkdtemp(prefix="revoker-bench-results-"))
    elif args.output.resolve() != DEFAULT_OUTPUT:
        # Another document (a test's) gets its data and figures beside it, not the repository's.
        RESULTS_DIR = args.output.parent / "bench-results"
        FIGURES_DIR = args.output.parent / "bench-figures"
    names = available()
    if args.only:
        wanted = [n for part in args.only for n in part.split(",") if n]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    failed: list[str] = []
    for name in names:
        print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr)
        started = time.monotonic()
        try:
            module = importlib.import_module(name)
            section = module.run(quick=args.quick)
        except Exception:
            # One broken benchmark must not cost the others' figures: report it and go on.
            traceback.print_exc()
            failed.append(name)
            continue
        if not section.lstrip().startswith("## "):
            print(f"{name}: its section does not start with '## '", file=sys.stderr)
            failed.append(name)
            continue
        if args.no_write:
            print(section)
        else:
            write_section(args.output, name, section)
        print(f"== {name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not draw_figures(args.output, write=not args.no_write):
        failed.append("plots")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.no_write:
        print(f"updated {args.output}", file=sys.stderr)
    return 0


def draw_figures(output: Path, *, write: bool) -> bool:
    """Draw every figure whose results exist; embed them in ``output`` when ``write``."""
    try:
        import plots
    except ModuleNotFoundError as e:
        print(f"plots: {e.name} is missing: pip install -e '.[bench]'", file=sys.stderr)
        return False
    figures = plots.draw_all(RESULTS_DIR, FIGURES_DIR)
    for figure in figures:
        print(f"  figure {figure.path}", file=sys.stderr)
    if figures and write:
        write_section(output, "figures", plots.markdown(figures, output.parent))
    return True


if __name__ == "__main__":
    sys.exit(main())
