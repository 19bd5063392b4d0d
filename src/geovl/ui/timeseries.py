"""Dated GeoTIFFs as an image time series in the web app (the "时间序列 / Time series" card).

Each file gets one ISO date (``YYYY-MM-DD``), in this order of precedence:

1. typed in the card's dates box — one per file, in upload order (``2019-06-01, 2021-06-01``; ``20190601``
   and ``2019/06/01`` are accepted and written as ISO);
2. read from the file name (``county_2019-06-01.tif``, ``S2_20210601_T50.tif``);
3. read from the file's ``TIFFTAG_DATETIME`` tag (``2019:06:01 10:30:00``).

The dates are checked like a dataset's ``meta["dates"]`` (:func:`geovl.data.schema.check_dates`: real
calendar dates, one per image), must differ, and the images are put in date order. The question the
model sees is the time-series prompt of the training data (:func:`geovl.synth.series_qa.date_preamble`,
"影像1（2019-06-01）、影像2（2021-06-01）是同一地点按时间顺序拍摄的影像。" / "Image 1 (2019-06-01) and Image 2
(2021-06-01) show the same place in time order.") followed by the user's question, after the N images —
images, not video frames, for every family (docs/timeseries.md says why).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.schema import SampleError, check_dates
from ..errors import GeoVLError

_DATE = re.compile(r"(?<!\d)(\d{4})[-_./]?(\d{2})[-_./]?(\d{2})(?!\d)")
_TAG = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})")


class SeriesError(GeoVLError):
    """A time series the app cannot build; ``key`` and ``fmt`` name the i18n message."""

    def __init__(self, key: str, **fmt):
        super().__init__(f"{key}: {fmt}")
        self.key, self.fmt = key, fmt


@dataclass
class SeriesItem:
    path: str
    name: str
    date: str  # ISO YYYY-MM-DD
    source: str  # "typed" | "name" | "tag"


def _iso(y: str, m: str, d: str) -> str | None:
    try:
        return datetime.date(int(y), int(m), int(d)).isoformat()
    except ValueError:
        return None


def date_from_name(name: str) -> str | None:
    """The last valid date written in a file name (``..._2019-06-01.tif``, ``..._20190601_...``), else None."""
    found = [_iso(*m.groups()) for m in _DATE.finditer(Path(name).stem)]
    found = [d for d in found if d]
    return found[-1] if found else None


def date_from_tag(path: str) -> str | None:
    """The date of a TIFF's ``TIFFTAG_DATETIME`` tag, else None."""
    from .geo_panel import inspect_upload

    try:
        when = inspect_upload(path).get("datetime")
    except Exception:  # noqa: BLE001 - an unreadable file is refused when it is loaded, with its reason
        return None
    m = _TAG.match(when or "")
    return _iso(*m.groups()) if m else None


def typed_dates(text: str) -> list[str]:
    """Dates typed in the card, ISO; :class:`SeriesError` ``ts_err_bad_date`` naming a bad one."""
    out = []
    for tok in re.split(r"[\s,;，；、]+", (text or "").strip()):
        if not tok:
            continue
        m = _DATE.fullmatch(tok)
        iso = _iso(*m.groups()) if m else None
        if iso is None:
            raise SeriesError("ts_err_bad_date", value=tok[:40])
        out.append(iso)
    return out


def date_series(paths: list[str], dates_text: str = "", max_images: int | None = None) -> list[SeriesItem]:
    """The uploaded files with their dates, in date order; :class:`SeriesError` when fewer than two files,
    more than ``max_images``, a file without a date, a typed count that differs from the files, or two
    files on the same date."""
    paths = [p for p in paths or [] if p]
    if len(paths) < 2:
        raise SeriesError("ts_err_too_few", n=len(paths))
    if max_images is not None and len(paths) > max_images:
        raise SeriesError("ts_err_too_many", n=len(paths), max=max_images)
    typed = typed_dates(dates_text)
    if typed and len(typed) != len(paths):
        raise SeriesError("ts_err_count", n_dates=len(typed), n_files=len(paths))
    items = []
    for i, p in enumerate(paths):
        name = Path(p).name
        if typed:
            date, source = typed[i], "typed"
        elif (date := date_from_name(name)) is not None:
            source = "name"
        elif (date := date_from_tag(p)) is not None:
            source = "tag"
        else:
            raise SeriesError("ts_err_no_date", name=name)
        items.append(SeriesItem(p, name, date, source))
    try:
        check_dates([it.date for it in items], len(items))
    except SampleError as e:  # cannot happen for dates built above; kept as the one rule of a valid series
        raise SeriesError("ts_err_bad_date", value=str(e)[:80]) from None
    seen: dict[str, str] = {}
    for it in items:
        if it.date in seen:
            raise SeriesError("ts_err_duplicate", date=it.date, a=seen[it.date], b=it.name)
        seen[it.date] = it.name
    return sorted(items, key=lambda it: it.date)


def series_prompt(dates: list[str], question: str, lang: str) -> str:
    """The text after the N images: the dates of the training data's time-series prompt, then the question."""
    from ..synth.series_qa import date_preamble

    return date_preamble(list(dates), lang) + question.strip()
