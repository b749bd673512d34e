"""The web console's pages (filled in by the web part of issue 10)."""

from __future__ import annotations

from typing import Any


def routes(console: Any) -> list[Any]:
    return []
