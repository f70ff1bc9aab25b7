"""The README's reference parts match the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import revoker
from revoker.settings import settings_reference

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_configuration_table_matches_the_settings_model() -> None:
    """The configuration reference in the README is the one generated from RevokerSettings."""
    match = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert match is not None, "README lost its settings markers"
    assert match.group(1) == settings_reference()


def test_readme_names_only_public_api() -> None:
    """Every name the tour imports from revoker is exported by the package."""
    imported = re.findall(r"from revoker import ([\w, ]+)", README)
    names = {name.strip() for group in imported for name in group.split(",")}
    assert names, "the tour imports nothing from revoker"
    assert names <= set(revoker.__all__)


def test_the_two_commands_come_first() -> None:
    """`make demo` and `make test` are the first commands a reader meets."""
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block
    assert "make test" in first_block


SRC = Path(revoker.__file__).parent


def _module_map() -> dict[str, str]:
    """The Design section's module table: each module the first column names -> its row."""
    header = r"\| module \| owns \| imports Celery\? \|\n\| --- .*?\n"
    match = re.search(header + r"((?:\|.*\n)+)", README)
    assert match is not None, "README lost its module table (| module | owns | imports Celery? |)"
    rows: dict[str, str] = {}
    for line in match.group(1).splitlines():
        first, owns = line.split(" | ", 2)[:2]
        for name in re.findall(r"`([\w.]+)`", first):
            rows[name] = owns
    return rows


def test_module_table_names_every_module_and_only_those() -> None:
    """Every module and package of src/revoker has a row in the README's module map (and every
    row names one that exists), and each package's row names each of its modules."""
    rows = _module_map()
    top = {
        path.stem
        for path in SRC.iterdir()
        if (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
        or (path.is_dir() and (path / "__init__.py").is_file() and path.name != "scripts")
    }
    assert set(rows) == top, (
        f"modules without a row: {sorted(top - set(rows))}; "
        f"rows naming no module: {sorted(set(rows) - top)}"
    )
    for package in sorted(name for name in top if (SRC / name).is_dir()):
        owns = rows[package]
        parts = {p.stem for p in (SRC / package).glob("*.py") if p.stem != "__init__"}
        unnamed = sorted(part for part in parts if not re.search(rf"`{part}[`.]", owns))
        assert not unnamed, f"the {package} row does not name {unnamed}"
    assert "`scripts/`" in rows["store"], "the Lua scripts' owner"
