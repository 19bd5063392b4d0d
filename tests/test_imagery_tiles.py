"""The one tiling module: rasterio windows, the clip/shift edge placement and the resume journal."""

import json

import numpy as np
import pytest
from rasterio.windows import Window

from geovl.errors import GeoVLError
from geovl.imagery.tiles import TileGrid, TileJournal, TilingError, axis_starts, strips, window_list


def test_edge_rules_differ_only_in_the_last_window():
    assert axis_starts(64, 32, 8, "clip") == [0, 24, 48]
    assert axis_starts(64, 32, 8, "shift") == [0, 24, 32]
    for size in range(1, 200, 7):
        clip, shift = axis_starts(size, 32, 8, "clip"), axis_starts(size, 32, 8, "shift")
        assert len(clip) == len(shift) and clip[:-1] == shift[:-1]
        assert clip[-1] < size and clip[-1] + 32 >= size  # the clipped last window reaches the edge
        assert shift[-1] == max(0, size - 32)
    g = TileGrid(70, 20, 32, 8, edge="shift", min_tile=8)
    assert g.windows() == [Window(0, 0, 32, 20), Window(24, 0, 32, 20), Window(38, 0, 32, 20)]
    c = TileGrid(70, 20, 32, 8)
    assert c.windows()[-1] == Window(48, 0, 22, 20) and c.window(0, 2) == Window(48, 0, 22, 20)
    assert window_list(c.window(0, 2)) == [48, 0, 22, 20]


@pytest.mark.parametrize("edge", ["clip", "shift"])
def test_every_pixel_is_covered_inside_the_raster(edge):
    for w, h in [(1, 1), (50, 7), (224, 225), (700, 451)]:
        g = TileGrid(w, h, 224, 32, edge=edge)
        cover = np.zeros((h, w), int)
        for win in g.windows():
            assert win.col_off >= 0 and win.row_off >= 0
            assert win.col_off + win.width <= w and win.row_off + win.height <= h
            cover[win.toslices()] += 1
        assert cover.min() >= 1 and len(g.windows()) == g.count


def test_bad_options_are_geovl_errors():
    for bad in ((224, 224), (224, -1), (8, 0)):
        with pytest.raises(TilingError, match="--overlap|--tile") as e:
            TileGrid(100, 100, *bad)
        assert isinstance(e.value, GeoVLError) and isinstance(e.value, ValueError)
    with pytest.raises(TilingError, match="edge rule"):
        TileGrid(100, 100, 32, 0, edge="wrap")
    with pytest.raises(TilingError, match="clip edge"):
        TileGrid(100, 100, 32, 0, edge="shift").out_transform(None)


def test_strips_cover_once():
    wins = strips(17, 23, 5, 6)
    seen = np.zeros((23, 17), int)
    for w in wins:
        seen[w.toslices()] += 1
    assert (seen == 1).all() and len(wins) == 15


HEADER = {"schema": "test.tiles/1", "tile": 32, "question": "q?", "engine": "a"}


def test_journal_resumes_cuts_a_torn_line_and_refuses_another_run(tmp_path):
    side = tmp_path / "run.tiles.jsonl"
    j = TileJournal(side, HEADER, ("tile", "question", "engine"))
    done, w = j.open(resume=False)
    assert done == {}
    with w:
        w.write({"row": 0, "col": 0, "v": 1})
        w.write({"row": 0, "col": 1, "v": 2})
    with open(side, "a", encoding="utf-8") as f:
        f.write('{"row": 0, "col": 2, "v"')  # killed while writing this line
    done, w = j.open(resume=True)
    with w:
        w.write({"row": 0, "col": 2, "v": 3})
    assert sorted(done) == [(0, 0), (0, 1)]
    lines = side.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x).get("v") for x in lines] == [None, 1, 2, 3]  # the torn line is gone
    assert sorted(j.load()) == [(0, 0), (0, 1), (0, 2)]

    with pytest.raises(TilingError, match=r"different run \(engine: 'a' then, 'b' now\)"):
        TileJournal(side, HEADER | {"engine": "b"}, ("tile", "question", "engine")).load()
    # a broken line that is not the last one is refused with its line number
    side.write_text("\n".join([lines[0], "not json", lines[1]]) + "\n", encoding="utf-8")
    with pytest.raises(TilingError, match="line 2 is not JSON"):
        j.load()
    side.write_text(json.dumps({"schema": "other/1"}) + "\n", encoding="utf-8")
    with pytest.raises(TilingError, match="no test.tiles/1 header"):
        j.load()
    # without resume an old journal is replaced
    done, w = j.open(resume=False)
    w.close()
    assert done == {} and [json.loads(x) for x in side.read_text().splitlines()] == [HEADER]
