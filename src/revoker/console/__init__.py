"""The operator console's parts beside its routes (``revoker.api.console``).

==============  ============================================================================
``sessions``    sign-in sessions (Redis, behind a signed cookie) and CSRF tokens
``data``        what the pages read: job details, the audit trail, the metrics counters
``templates/``  the Jinja2 pages (package data)
``static/``     the stylesheet and the one script (inlined with a CSP nonce: no static route)
==============  ============================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["STATIC_DIR", "TEMPLATES_DIR"]

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"
