"""Tiling a raster into windows: the one grid and the one resume journal every tiled reader uses.

Windows are :class:`rasterio.windows.Window` ``(col_off, row_off, width, height)`` everywhere
(``geovl map``, ``geovl detect``, ``geovl spectral vlm-map`` and the cube readers); ``window.toslices()``
gives ``(rows, cols)`` slices for numpy.

**Grid** (:class:`TileGrid`): square windows of ``tile`` pixels whose top-left corners step by
``stride = tile − overlap``. Along an axis of ``n`` pixels there are ``1 + ceil((n − tile) / stride)``
windows (1 when ``n ≤ tile``); window ``k`` starts at ``k · stride`` except the last one, which is
placed by the **edge rule**:

- ``edge="clip"`` (default; ``geovl map``, ``geovl detect``): the last window starts at ``k · stride``
  too and is clipped at the raster edge (callers pad its image to ``tile × tile``). Tile ``(r, c)``
  is therefore always at ``(c · stride, r · stride)``, so a one-pixel-per-tile output raster has a
  plain affine transform (:meth:`TileGrid.out_transform`).
- ``edge="shift"`` (``vlm-map``): the last window is moved back to start at ``n − tile`` so that it
  ends exactly at the edge; every window is a full tile (unless the raster is smaller than one, then
  one window of the raster's size). Its blending is per pixel, so an irregular last step costs nothing.

Both rules give the same windows except the last along each axis, and the same count. Two placements
remain because the existing tests pin both (``tests/test_geo_map.py`` expects the clipped
``(384, 384, 216, 66)`` corner tile; ``tests/test_spectral_vlm_map.py`` expects starts ``[0, 24, 32]``
on 64 pixels); the rule is chosen by name here, never re-implemented by a caller.

**Resume** (:class:`TileJournal`): a JSONL sidecar whose first line is a header (``schema`` plus the
run's identity: raster size, transform, tiling, question, model, …) and then one record per finished
tile with its ``row`` and ``col``. Resuming reads the sidecar back: a header made by a different run
(any of the compared keys differs) is refused naming the keys; a torn last line (the run was killed
while writing it) is cut off; any other line that is not JSON is refused with its line number. Tiles
already in the journal are not asked again. Both tiled mappers resume this way (``geovl map`` keeps
its sidecar as the run's record; ``vlm-map`` removes its journal once every output is written).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import Window

from ..errors import GeoVLError

EDGES = ("clip", "shift")


class TilingError(GeoVLError, ValueError):
    """A tiling option or a resume journal that cannot be used; the message names it."""


def axis_starts(size: int, tile: int, overlap: int, edge: str = "clip") -> list[int]:
    """Offsets of the windows along an axis of ``size`` pixels (see the module docstring)."""
    check_options(tile, overlap, edge=edge)
    if size < 1:
        raise TilingError(f"empty axis ({size} pixels)")
    stride = tile - overlap
    n = 1 if size <= tile else 1 + math.ceil((size - tile) / stride)
    starts = [k * stride for k in range(n)]
    if edge == "shift" and n > 1:
        starts[-1] = size - tile
    return starts


def check_options(tile: int, overlap: int, min_tile: int = 1, edge: str = "clip") -> None:
    if tile < min_tile:
        raise TilingError(f"--tile must be at least {min_tile} pixels, got {tile} / 窗口尺寸过小")
    if not 0 <= overlap < tile:
        raise TilingError(f"--overlap must be >= 0 and smaller than --tile ({tile}), got {overlap} / 重叠像素数无效")
    if edge not in EDGES:
        raise TilingError(f"edge rule must be one of {', '.join(EDGES)}, got {edge!r}")


@dataclass(frozen=True)
class TileGrid:
    """``n_rows × n_cols`` windows over a ``width × height`` raster (see the module docstring)."""

    width: int
    height: int
    tile: int = 224
    overlap: int = 32
    edge: str = "clip"
    min_tile: int = 16

    def __post_init__(self):
        check_options(self.tile, self.overlap, self.min_tile, self.edge)
        if self.width < 1 or self.height < 1:
            raise TilingError(f"empty raster ({self.width} x {self.height})")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.tile, self.overlap, self.edge)

    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.tile, self.overlap, self.edge)

    @property
    def n_cols(self) -> int:
        return len(self.col_starts())

    @property
    def n_rows(self) -> int:
        return len(self.row_starts())

    @property
    def count(self) -> int:
        return self.n_rows * self.n_cols

    def window(self, row: int, col: int) -> Window:
        """The :class:`~rasterio.windows.Window` of tile ``(row, col)``, inside the raster."""
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"tile ({row}, {col}) outside the {self.n_rows} x {self.n_cols} grid")
        x, y = self.col_starts()[col], self.row_starts()[row]
        return Window(x, y, min(self.tile, self.width - x), min(self.tile, self.height - y))

    def __iter__(self):
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                yield r, c

    def windows(self) -> list[Window]:
        """Every window, row by row."""
        cols, rows = self.col_starts(), self.row_starts()
        return [
            Window(x, y, min(self.tile, self.width - x), min(self.tile, self.height - y)) for y in rows for x in cols
        ]

    def out_transform(self, transform):
        """The raster's affine transform scaled to one pixel per tile stride (``edge="clip"`` only:
        tile ``(r, c)`` is pixel ``(r, c)``, whose top-left corner is the tile's top-left corner)."""
        from affine import Affine

        if self.edge != "clip":
            raise TilingError("one pixel per tile needs the clip edge rule (the shifted last tile is off the stride)")
        return transform @ Affine.scale(self.stride)

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "tile": self.tile,
            "overlap": self.overlap,
            "stride": self.stride,
            "rows": self.n_rows,
            "cols": self.n_cols,
            "tiles": self.count,
        }


def strips(width: int, height: int, rows: int, cols: int | None = None) -> list[Window]:
    """Non-overlapping windows of ``rows`` rows (and ``cols`` columns if given) covering a raster once,
    row strip by row strip; the last ones clipped at the edges (chunked reading, no model tiles)."""
    if rows < 1:
        raise TilingError("rows per window must be >= 1")
    cols = width if not cols else cols
    return [
        Window(c, r, min(cols, width - c), min(rows, height - r))
        for r in range(0, height, rows)
        for c in range(0, width, cols)
    ]


def window_list(window: Window) -> list[int]:
    """``[col_off, row_off, width, height]`` as ints (how journals and reports store a window)."""
    return [int(v) for v in window.flatten()]


# ------------------------------------------------------------------------------------------ journal
class TileJournal:
    """The resume sidecar of a tiled run (see the module docstring)."""

    def __init__(self, path, header: dict, compare: tuple[str, ...]):
        if "schema" not in header:
            raise ValueError("a journal header needs a schema")
        self.path, self.header, self.compare = Path(path), header, tuple(compare)

    def load(self) -> dict[tuple[int, int], dict]:
        """Records of the previous run keyed by ``(row, col)`` ({} when the sidecar is empty); the torn
        last line of a killed run is cut off the file."""
        side, schema = self.path, self.header["schema"]
        raw = side.read_bytes()
        lines = raw.split(b"\n")
        good_end, records, head = 0, {}, None
        for i, line in enumerate(lines):
            if not line.strip():
                good_end += len(line) + 1
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:  # interrupted while writing the last line
                    break
                raise TilingError(
                    f"{side}: line {i + 1} is not JSON — fix or delete the file (or --overwrite)"
                ) from None
            if head is None:
                if not isinstance(rec, dict) or rec.get("schema") != schema:
                    raise TilingError(
                        f"{side}: not a geovl tile journal (no {schema} header); pass --overwrite to replace it"
                    )
                head = rec
            else:
                try:
                    records[(int(rec["row"]), int(rec["col"]))] = rec
                except (KeyError, TypeError, ValueError):
                    raise TilingError(f"{side}: line {i + 1} is not a tile record (row, col)") from None
            good_end += len(line) + 1
        if head is None:
            return {}
        diff = [k for k in self.compare if head.get(k) != self.header.get(k)]
        if diff:
            detail = "; ".join(f"{k}: {head.get(k)!r} then, {self.header.get(k)!r} now" for k in diff)
            raise TilingError(
                f"{side}: made by a different run ({detail}); --resume continues only the same "
                "raster, tiling, question and model — pass --overwrite to start again"
            )
        if good_end < len(raw):
            with open(side, "r+b") as f:
                f.truncate(min(good_end, len(raw)))
        return records

    def open(self, resume: bool) -> tuple[dict, "JournalWriter"]:
        """``(done records, writer)``: with ``resume`` the previous records (header checked), else a
        fresh journal (an old one is removed). The writer appends; the header is written first."""
        done = {}
        if self.path.exists() and resume:
            done = self.load()
        elif self.path.exists():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        w = JournalWriter(open(self.path, "a", encoding="utf-8"))
        if new:
            w.write(self.header)
            w.flush()
        return done, w


class JournalWriter:
    """Appends tile records (one JSON line each) to an open journal."""

    def __init__(self, f):
        self._f = f

    def write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
