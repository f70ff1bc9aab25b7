"""Job ids are safe to pass on a command line, in a URL and to Flower."""

from __future__ import annotations

import re

from revoker.jobs import new_job_id


def test_job_ids_are_unique_hex_that_never_look_like_an_option() -> None:
    """10,000 ids: all distinct, 24 lowercase hex digits, none starting with '-'."""
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
