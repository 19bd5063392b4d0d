"""The shared data layer: schema validation, streaming Parquet/JSONL writer + rejects file,
readers, and the safe image loader (header size check, EXIF, TIFF rendering, path escapes)."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geovl.data.io import DatasetFileError, DatasetWriter, count_samples, read_samples, rejects_path_for
from geovl.data.schema import Counts, SampleError, make_sample, validate_sample
from geovl.imagery.decode import ImageError, load_image, load_image_bytes, resolve_image_path
from geovl.imagery.geotiff import Raster, write_raster

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _png(seed=0, size=(16, 12), mode="RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n=5):
    return [
        make_sample(
            f"id{i}",
            f"问题 {i}?",
            f"answer {i}",
            images=[_png(i)] * (i % 3),
            qtype="open",
            source=f"src#{i}",
            meta={"i": i, "lang": "zh"},
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda s: s.pop("messages"), "bad_schema"),
        (lambda s: s.update(id=""), "bad_schema"),
        (lambda s: s.update(qtype="essay"), "bad_qtype"),
        (lambda s: s.update(images=[]), "image_count_mismatch"),
        (lambda s: s["messages"][1]["content"][0].update(text="  "), "empty_answer"),
        (lambda s: s["messages"][0].update(content=[{"type": "text", "text": ""}]), "empty_question"),
        (lambda s: s["messages"][1]["content"].append({"type": "image"}), "bad_schema"),
        (lambda s: s.update(images=[b""]), "bad_schema"),
        (lambda s: s.update(meta="x"), "bad_schema"),
    ],
)
def test_validate_sample_reasons(mutate, reason):
    s = make_sample("a", "q", "a", images=[_png()])
    mutate(s)
    with pytest.raises(SampleError) as e:
        validate_sample(s)
    assert e.value.reason == reason


def test_counts_conservation_bookkeeping():
    c = Counts()
    c.read = 3
    c.written = 1
    c.reject("x")
    assert not c.conserved
    c.reject("y")
    assert c.conserved and c.as_dict()["rejected_by_reason"] == {"x": 1, "y": 1}


# ------------------------------------------------------------------------------ writer / readers


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_writer_round_trip_and_rejects(tmp_path, ext):
    out = tmp_path / f"d.{ext}"
    samples = _samples()
    with DatasetWriter(out) as w:
        for s in samples:
            w.read_one()
            w.write(s)
        w.read_one()
        assert not w.write(dict(samples[0]))  # duplicate id
        w.read_one()
        w.reject("file#9", "missing_image", "x.png")
    assert w.counts.as_dict() == {
        "read": 7,
        "written": 5,
        "rejected": 2,
        "rejected_by_reason": {"duplicate_id": 1, "missing_image": 1},
        "conserved": True,
    }
    assert list(read_samples(out)) == samples
    assert count_samples(out) == 5
    rej = [json.loads(x) for x in rejects_path_for(out).read_text().splitlines()]
    assert [r["reason"] for r in rej] == ["duplicate_id", "missing_image"]
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_is_plain_arrow_and_column_subset(tmp_path):
    out = tmp_path / "d.parquet"
    with DatasetWriter(out) as w:
        for s in _samples(70):  # more than one row group
            w.write(s)
    t = pq.read_table(out)
    assert t.schema.field("images").type == pa.list_(pa.binary())
    assert t.schema.field("meta").type == pa.string()
    rows = list(read_samples(out, columns=["id", "qtype", "meta"]))
    assert len(rows) == 70 and set(rows[0]) == {"id", "qtype", "meta"} and rows[69]["meta"]["i"] == 69


def test_jsonl_base64_mode_and_reader_refs(tmp_path):
    out = tmp_path / "d.jsonl"
    with DatasetWriter(out, images="base64") as w:
        for s in _samples(3):
            w.write(s)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[1]["images"][0].startswith("data:image/png;base64,")
    assert list(read_samples(out)) == _samples(3)
    # raw base64 and relative paths are accepted by the reader too
    (tmp_path / "p.png").write_bytes(_png(7))
    rec = dict(lines[1], images=[base64.b64encode(_png(7)).decode()], messages=lines[1]["messages"])
    rec2 = dict(lines[1], id="other", images=["p.png"])
    (tmp_path / "e.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec2) + "\n")
    a, b = read_samples(tmp_path / "e.jsonl")
    assert a["images"] == b["images"] == [_png(7)]


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_crash_publishes_nothing_and_removes_its_partial_files(tmp_path, ext):
    out = tmp_path / f"d.{ext}"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out) as w:
            w.write(_samples(1)[0])
            raise RuntimeError("boom")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    # an earlier complete output is left as it was
    with DatasetWriter(out) as w:
        w.write(_samples(1)[0])
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):
        with DatasetWriter(out) as w:
            w.write(_samples(2)[1])
            raise RuntimeError("boom")
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetFileError, match="nope.parquet"):
        list(read_samples(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetFileError, match="other.parquet.*missing column"):
        list(read_samples(tmp_path / "other.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DatasetFileError, match="bad.jsonl:1"):
        list(read_samples(tmp_path / "bad.jsonl"))


# ------------------------------------------------------------------------------ image loading


def test_png_bytes_kept_and_truncated_rejected(tmp_path):
    data = _png(3)
    (tmp_path / "a.png").write_bytes(data)
    img = load_image(tmp_path / "a.png")
    assert img.data == data and (img.width, img.height) == (16, 12)
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "t.png")
    assert e.value.reason == "undecodable_image"
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "none.png")
    assert e.value.reason == "missing_image"


def test_size_checked_from_header_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (3000, 3000)).save(tmp_path / "huge.png")
    write_raster(tmp_path / "huge.tif", Raster(np.zeros((1, 3000, 3000), np.uint8)))
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: decoded.append(1) or real_load(self, *a))
    import geovl.imagery.geotiff as gt

    monkeypatch.setattr(gt, "read_raster", lambda *a: decoded.append(2))
    for name in ("huge.png", "huge.tif"):
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name, max_pixels=1_000_000)
        assert e.value.reason == "image_too_large" and "3000x3000" in e.value.detail
    assert decoded == []


def test_exif_orientation_6(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = 255  # left third white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", quality=95, exif=exif)
    img = load_image(tmp_path / "r.jpg")
    out = np.asarray(Image.open(io.BytesIO(img.data)).convert("L"))
    assert (img.width, img.height) == (10, 30) and out.shape == (30, 10)
    # rotated 90° clockwise: the white left third is now the top third
    assert out[:8].mean() > 200 and out[12:].mean() < 50


def test_tiffs_16bit_georeferenced_and_bytes(tmp_path):
    data = np.stack([np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * (k + 1) for k in range(4)])
    r = Raster(
        data, "EPSG:4326", (0.001, 0.0, 116.3, 0.0, -0.001, 39.9), nodata=None, band_names=["b", "g", "r", "nir"]
    )
    write_raster(tmp_path / "g.tif", r)
    img = load_image(tmp_path / "g.tif")
    assert img.meta["crs"] == "EPSG:4326" and img.meta["bands"] == 4 and img.meta["dtype"] == "uint16"
    assert img.meta["band_names"] == ["b", "g", "r", "nir"]
    px = np.asarray(Image.open(io.BytesIO(img.data)))
    assert px.shape == (64, 64, 3) and px.dtype == np.uint8 and px.min() == 0 and px.max() == 255
    again = load_image_bytes((tmp_path / "g.tif").read_bytes())
    assert again.data == img.data


def test_resolve_image_path_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(_png())
    assert resolve_image_path(root, "sub/../sub/x.png") == (root / "sub" / "x.png").resolve()
    assert resolve_image_path(root, "sub\\x.png") == (root / "sub" / "x.png").resolve()
    os.symlink(tmp_path / "secret.png", root / "link.png")
    for ref in ("../secret.png", "/etc/passwd", "~/x.png", "sub/../../secret.png", "link.png"):
        with pytest.raises(ImageError) as e:
            resolve_image_path(root, ref)
        assert e.value.reason == "path_escape", ref
    with pytest.raises(ImageError) as e:
        resolve_image_path(root, "  ")
    assert e.value.reason == "missing_image"
