"""One imagery path (issue 15): every raster format through rasterio and one set of rendering rules,
so `data convert`, `infer`, `ask` and the API hand the model the very same pixels."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from geovl.cli import main
from geovl.data.io import read_samples
from geovl.imagery.decode import ImageError, load_image, load_image_bytes
from geovl.imagery.render import RenderSettings, parse_bands, render_spec

H = W = 48
PROFILE = dict(crs="EPSG:32650", transform=from_origin(440000, 4065000, 10, 10))


def _bgrn(seed=0) -> np.ndarray:
    """A blue, green, red, NIR uint16 stack: water (left) is blue-dominant, vegetation (right) NIR-high."""
    rng = np.random.default_rng(seed)
    a = np.empty((4, H, W), np.uint16)
    a[:, :, : W // 2] = np.array([1800, 1200, 600, 300])[:, None, None]  # water: B > G > R > NIR
    a[:, :, W // 2 :] = np.array([500, 900, 400, 4000])[:, None, None]  # vegetation
    return (a + rng.integers(0, 200, a.shape)).astype(np.uint16)


def _write(path, data, driver="GTiff", **kw):
    prof = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype.name)
    prof.update(kw)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def _px(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _convert(tmp_path, image_name, *extra) -> tuple[int, list[dict], list[dict]]:
    rec = {
        "id": "s1",
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there water?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
        ],
        "images": [image_name],
        "qtype": "yes_no",
        "answer": "yes",
    }
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "out.parquet"
    rc = main(
        ["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--no-progress", *extra]
    )
    rows = list(read_samples(out)) if out.exists() else []
    rej = tmp_path / "out.rejects.jsonl"
    rejects = [json.loads(x) for x in rej.read_text().splitlines()] if rej.exists() else []
    return rc, rows, rejects


def test_convert_infer_ask_and_api_give_the_model_identical_input(tmp_path, capsys):
    from geovl.geo.tiles import image_for_model
    from geovl.infer import image_bytes
    from geovl.inference.engine import decode_image
    from geovl.models.preprocess import PreprocessConfig

    tif = _write(tmp_path / "bgrn.tif", _bgrn(), **PROFILE)
    rc, rows, _ = _convert(tmp_path, "bgrn.tif")
    assert rc == 0 and len(rows) == 1
    stored = rows[0]["images"][0]
    stored = stored["bytes"] if isinstance(stored, dict) else stored
    assert "R,G,B = bands 3,2,1" in capsys.readouterr().out  # the assumed band order is printed
    # true colour: R is band 3 (red), B is band 1 (blue) — before, convert showed bands 1-3 as R,G,B
    px = _px(stored)
    assert np.array_equal(px[..., 0], _px(load_image(tif, render="3,3,3").data)[..., 0])
    assert np.array_equal(px[..., 2], _px(load_image(tif, render="1,1,1").data)[..., 0])
    assert not np.array_equal(px[..., 0], px[..., 2])
    # the same bytes through infer and ask, the same pixel array through the API's decoder
    assert image_bytes(tif) == stored
    assert image_for_model(tif)[0] == stored
    api = np.asarray(decode_image(tif.read_bytes(), None))
    assert np.array_equal(api, _px(stored))
    assert np.array_equal(np.asarray(decode_image(stored, None)), api)
    # render settings saved in the preprocessing config apply on every path, like convert --bands
    rc, rows, _ = _convert(tmp_path, "bgrn.tif", "--bands", "4,3,2")
    nir = rows[0]["images"][0]
    nir = nir["bytes"] if isinstance(nir, dict) else nir
    pre = PreprocessConfig(rgb_bands=[3, 2, 1])
    assert image_bytes(tif, pre) == nir and image_for_model(tif, pre)[0] == nir
    assert np.array_equal(np.asarray(decode_image(tif.read_bytes(), pre)), _px(nir))
    pre.save(tmp_path)
    assert PreprocessConfig.load(tmp_path).rgb_bands == [3, 2, 1]
    order = PreprocessConfig(band_order=["blue", "green", "red", "nir"])
    assert image_bytes(tif, order) == stored


def test_bands_option_and_rules():
    assert parse_bands("3,2,1").rgb_bands == (2, 1, 0)
    assert parse_bands("blue,green,red,nir").band_order == ("blue", "green", "red", "nir")
    with pytest.raises(ValueError):
        parse_bands("3,2")
    with pytest.raises(ValueError):
        parse_bands("3,red,1")
    assert render_spec(4).bands == (2, 1, 0)
    assert render_spec(3).bands == (0, 1, 2)
    assert render_spec(4, ["Red", "Green", "Blue", "NIR"]).bands == (0, 1, 2)
    # colour interpretation: an RGBA raster is shown as R,G,B — not read as blue,green,red,nir
    assert render_spec(4, colorinterp=["red", "green", "blue", "alpha"]).bands == (0, 1, 2)
    assert render_spec(4, settings=RenderSettings(rgb_bands=(3, 2, 1))).bands == (3, 2, 1)
    with pytest.raises(ValueError):
        render_spec(3, settings=RenderSettings(rgb_bands=(3, 2, 1)))


def test_jp2_vrt_envi_render_like_the_geotiff(tmp_path):
    """Before: JP2, VRT and ENVI went through Pillow (raw JP2 bytes stored, VRT 'cannot identify image')."""
    data = _bgrn(1)
    tif = _write(tmp_path / "a.tif", data, **PROFILE)
    ref = load_image(tif)
    assert ref.meta["crs"] == "EPSG:32650" and ref.meta["render"]["bands"] == [2, 1, 0]
    files = {"vrt": _vrt(tmp_path / "a.vrt", tif, W, H)}
    _write(tmp_path / "e.img", data, driver="ENVI", **PROFILE)
    files["envi"], files["envi header"] = tmp_path / "e.img", tmp_path / "e.hdr"
    with rasterio.Env() as env:
        if "JP2OpenJPEG" in env.drivers():
            files["jp2"] = _write(
                tmp_path / "a.jp2", data, driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES", **PROFILE
            )
    for what, f in files.items():
        img = load_image(f)
        assert img.data[:4] == b"\x89PNG", what
        assert img.data == ref.data, what
        assert img.meta["crs"] == "EPSG:32650", what
    if "jp2" in files:  # a JP2 upload (bytes) renders the same as the file
        assert load_image_bytes(files["jp2"].read_bytes()).data == ref.data
    # a VRT may point anywhere on disk: never read from uploaded bytes
    with pytest.raises(ImageError, match="file path only"):
        load_image_bytes(files["vrt"].read_bytes())


def test_jp2_driver_present_in_rasterio_wheel():
    with rasterio.Env() as env:
        if "JP2OpenJPEG" not in env.drivers():
            pytest.skip("this rasterio build has no JP2OpenJPEG driver")
    assert True


def test_size_check_stays_in_front_of_gdal_formats(tmp_path):
    tif = _write(tmp_path / "a.tif", _bgrn(), **PROFILE)
    huge = _vrt(tmp_path / "huge.vrt", tif, 200_000, 200_000)  # declares 4e10 px; reads nothing
    with pytest.raises(ImageError) as e:
        load_image(huge)
    assert e.value.reason == "image_too_large"


def test_scale_offset_tags_are_applied(tmp_path):
    data = _bgrn(2)
    plain = load_image(_write(tmp_path / "p.tif", data, **PROFILE))
    with rasterio.open(_write(tmp_path / "s.tif", data, **PROFILE), "r+") as ds:
        ds.scales = [-2.75e-5] * 4  # a negative scale inverts brightness: visible only when applied
        ds.offsets = [1.0] * 4
    scaled = load_image(tmp_path / "s.tif")
    a, b = _px(plain.data).astype(int), _px(scaled.data).astype(int)
    assert np.abs((255 - a) - b).max() <= 1


def test_uint16_single_band_does_not_saturate(tmp_path):
    band = (np.arange(H * W, dtype=np.uint32).reshape(1, H, W) * 300 // (H * W) + 200).astype(np.uint16)
    png16 = tmp_path / "g16.png"
    Image.fromarray(band[0], mode="I;16").save(png16)
    files = [png16, _write(tmp_path / "g.tif", band)]
    with rasterio.Env() as env:
        if "JP2OpenJPEG" in env.drivers():
            files.append(_write(tmp_path / "g.jp2", band, driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES"))
    for f in files:
        px = _px(load_image(f).data)[..., 0]
        white = float((px == 255).mean())
        assert white < 0.05, (f.name, white)  # was 100 % white through Pillow
        assert px.min() == 0 and px.max() == 255 and len(np.unique(px)) > 100, f.name
    assert load_image(files[0]).data == load_image(files[1]).data  # one rule, whatever the container


@pytest.mark.parametrize("tagged", [False, True])
def test_nodata_and_untagged_fill_are_left_out_of_the_stretch(tmp_path, tagged):
    data = _bgrn(3)
    data[:, :, :12] = 0  # a quarter of the scene is fill (a reprojected scene's border)
    kw = dict(PROFILE, nodata=0) if tagged else PROFILE
    img = load_image(_write(tmp_path / "f.tif", data, **kw))
    px = _px(img.data)
    assert (px[:, :12] == 0).all()  # fill drawn black
    inner = px[:, 12:]
    assert inner.min() <= 8 and inner.max() == 255  # the stretch spans the valid pixels only
    assert img.meta["valid_fraction"] == pytest.approx(0.75)


def test_all_nodata_images_rejected_in_conversion_unless_kept(tmp_path):
    _write(tmp_path / "empty.tif", np.zeros((4, H, W), np.uint16), **PROFILE, nodata=0)
    rc, rows, rejects = _convert(tmp_path, "empty.tif")
    assert rc != 0 and rows == []
    assert [r["reason"] for r in rejects] == ["all_nodata"]
    rc, rows, _ = _convert(tmp_path, "empty.tif", "--keep-nodata")
    assert rc == 0 and len(rows) == 1


def _vrt(path, src, width, height, count=4):
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">{src.name}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in range(1, count + 1)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>EPSG:32650</SRS><GeoTransform>440000,10,0,4065000,0,-10</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def test_ask_and_infer_show_band_order_and_check_images_before_loading_the_model(tmp_path, capsys, tiny_model_dir):
    import shutil

    from geovl.models.preprocess import PreprocessConfig

    tif = _write(tmp_path / "bgrn.tif", _bgrn(), **PROFILE)
    # a model folder whose preprocessing config cannot render this 4-band raster, and no weights:
    # the image problem must be reported before any model loading is attempted
    bad = tmp_path / "bad_model"
    bad.mkdir()
    PreprocessConfig(rgb_bands=[5, 2, 1]).save(bad)
    assert main(["infer", "--image", str(tif), "-q", "water?", "--model", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "rgb_bands" in err and "bgrn.tif" in err
    assert main(["ask", "--image", str(tif), "-q", "How much water?", "--model", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "rgb_bands" in err and "bgrn.tif" in err

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2-vl"), model)
    assert (
        main(
            [
                "infer",
                "--image",
                str(tif),
                "-q",
                "water?",
                "--model",
                str(model),
                "--device",
                "cpu",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert "R,G,B = bands 3,2,1" in capsys.readouterr().err
    assert (
        main(
            [
                "ask",
                "--image",
                str(tif),
                "-q",
                "How much water?",
                "--model",
                str(model),
                "--device",
                "cpu",
                "--max-new-tokens",
                "2",
                "--bands",
                "blue,green,red,nir",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[波段 bands]" in out and "R,G,B = bands 3,2,1" in out


def test_inspect_with_model_uses_the_models_processor_pixel_bounds(tmp_path, tiny_model_dir):
    """Before: `data inspect --model` used the family's default bounds (1,258 tokens where the processor gave 240)."""
    import shutil

    from geovl.data.inspect import inspect_dataset
    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.models.loading import load_processor
    from geovl.models.preprocess import PreprocessConfig

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2.5-vl"), model)
    PreprocessConfig(min_pixels=56 * 56, max_pixels=240 * 28 * 28).save(model)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = tmp_path / "d.parquet"
    with DatasetWriter(data) as w:
        w.write(make_sample("s1", "What is here?", "water", [buf.getvalue()], "open", source="t"))
    # the processor's real count, as the engine sets it up
    proc = load_processor(model)
    PreprocessConfig.load(model).apply(proc)
    grid = proc.image_processor(images=[img], return_tensors="np")["image_grid_thw"][0]
    real = int(np.prod(grid)) // proc.image_processor.merge_size**2
    r = inspect_dataset(str(data), model=str(model), progress=False)
    assert r["visual_tokens_per_image"]["p100"] == real
    assert r["pixel_bounds"]["max_pixels"] == 240 * 28 * 28
    fam_default = inspect_dataset(str(data), family="qwen2.5-vl", progress=False)["visual_tokens_per_image"]["p100"]
    assert fam_default != real  # the family's defaults would have counted otherwise


def test_training_records_the_render_settings_of_its_converted_data(tmp_path):
    """`data convert --bands` is recorded in the summary; training copies it into geovl_preprocess.json."""
    from geovl.infer import image_bytes
    from geovl.models.preprocess import PreprocessConfig

    tif = _write(tmp_path / "bgrn.tif", _bgrn(), **PROFILE)
    rc, rows, _ = _convert(tmp_path, "bgrn.tif", "--bands", "4,3,2")
    assert rc == 0
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["render"]["settings"]["rgb_bands"] == [3, 2, 1]
    pre = PreprocessConfig()
    assert pre.take_render_from([str(tmp_path / "out.parquet")])
    pre.save(tmp_path)
    pre = PreprocessConfig.load(tmp_path)
    stored = rows[0]["images"][0]
    stored = stored["bytes"] if isinstance(stored, dict) else stored
    assert image_bytes(tif, pre) == stored  # serving renders as the training images were rendered
    other = tmp_path / "b"
    other.mkdir()
    _write(other / "bgrn.tif", _bgrn(), **PROFILE)
    assert _convert(other, "bgrn.tif")[0] == 0  # default rules: different settings
    with pytest.raises(ValueError, match="different raster render settings"):
        PreprocessConfig().take_render_from([tmp_path / "out.parquet", other / "out.parquet"])


def test_webapp_shows_and_sends_what_the_model_sees(tmp_path):
    """Before: with a model's rgb_bands the web app showed bands 1-3 and sent the raw TIFF for the engine to render."""
    from geovl.infer import image_bytes
    from geovl.inference.capabilities import InputSpec
    from geovl.models.preprocess import PreprocessConfig
    from geovl.ui.webapp import ChatApp

    class Engine:  # ChatApp only reads these attributes to load an image
        name = "stub"

        def __init__(self, pre):
            self.inputs = InputSpec(preprocess=pre)

    tif = _write(tmp_path / "bgrn.tif", _bgrn(), **PROFILE)
    for pre in (None, PreprocessConfig(rgb_bands=[3, 2, 1])):
        data, shown = ChatApp(Engine(pre)).load_image(str(tif), "en")
        assert data == image_bytes(tif, pre) and open(shown, "rb").read() == data
