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
