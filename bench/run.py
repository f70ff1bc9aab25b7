"""Run the benchmarks and write their sections into BENCHMARKS.md (``make bench``).

Each benchmark is a module ``bench/<name>.py`` with ``run(quick: bool = False) -> str`` returning
a Markdown section that starts with ``## ``. The modules run in ``ORDER`` (those that exist), and
each section replaces the text between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``
in BENCHMARKS.md; a section without markers yet is appended.

    .venv/bin/python bench/run.py                 # everything, full size
    .venv/bin/python bench/run.py --quick         # everything, small and fast
    .venv/bin/python bench/run.py --only middleware --only fanout
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

ORDER = ("middleware", "rotation", "fanout", "durability", "mirror")
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
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.no_write:
        print(f"updated {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
