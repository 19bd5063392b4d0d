"""Plain-text tables that stay aligned with Chinese text (CJK characters are two columns wide)."""

from __future__ import annotations

import unicodedata
from typing import Sequence


def display_width(s: str) -> int:
    """Terminal columns of ``s``: wide/full-width characters count 2, combining marks 0."""
    w = 0
    for c in s:
        if unicodedata.combining(c):
            continue
        w += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return w


def _pad(s: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - display_width(s))
    return gap + s if right else s + gap


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """Rows under headers with a rule line; ``right[i]`` right-aligns column ``i`` (numbers)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    n = len(headers)
    right = list(right) if right is not None else [False] + [True] * (n - 1)
    widths = [max(display_width(r[i]) for r in cells) for i in range(n)]
    lines = ["  ".join(_pad(r[i], widths[i], right[i]) for i in range(n)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
