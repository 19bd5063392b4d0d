"""STAC Items as raster input (geovl.imagery.stac): an Item whose four single-band COG assets hold the
bands of a 4-band GeoTIFF measures and renders exactly like that GeoTIFF; a missing band and a remote
href are refused with the item and the band named."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import pystac
import pytest
import rasterio

from geovl.cli import main
from geovl.geo.measure import measure_raster
from geovl.geo.tiles import image_for_model
from geovl.imagery.stac import StacError, is_stac, stac_inputs
from geovl.synth import synthesize

NAMES = ("blue", "green", "red", "nir")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("stac")
    synthesize(
        out / "synth", scenes=2, seed=5, size=64, langs="en", questions_per_scene=1, split="train=1", progress=False
    )
    rec = json.loads((out / "synth" / "scenes.jsonl").read_text().splitlines()[0])
    four = out / "synth" / rec["geotiffs"]["after"]
    with rasterio.open(four) as ds:
        assert ds.count == 4
        data, profile = ds.read(), ds.profile
    bands = out / "bands"
    bands.mkdir()
    for i, name in enumerate(NAMES):  # one single-band COG per band, as STAC providers publish them
        p = {k: profile[k] for k in ("crs", "transform", "width", "height", "dtype", "nodata")}
        with rasterio.open(bands / f"B{i + 1}.tif", "w", driver="COG", count=1, **p) as dst:
            dst.write(data[i], 1)
    return {"four": four, "bands": bands, "data": data}


def _item(folder, scene, names=NAMES, href=None, key_style="eo"):
    with rasterio.open(scene["four"]) as ds:
        b = ds.bounds
    item = pystac.Item(
        id="scene-1",
        geometry={
            "type": "Polygon",
            "coordinates": [
                [[b.left, b.bottom], [b.right, b.bottom], [b.right, b.top], [b.left, b.top], [b.left, b.bottom]]
            ],
        },
        bbox=list(b),
        datetime=datetime(2024, 6, 1, tzinfo=timezone.utc),
        properties={},
    )
    for i, name in enumerate(NAMES):
        if name not in names:
            continue
        target = href or os.path.relpath(scene["bands"] / f"B{i + 1}.tif", folder)  # relative to the item JSON
        extra = {"eo:bands": [{"name": f"B{i + 1}", "common_name": name}]} if key_style == "eo" else {}
        item.add_asset(
            f"B{i + 1}" if key_style == "eo" else name,
            pystac.Asset(href=target, media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra),
        )
    item.add_asset("thumbnail", pystac.Asset(href="thumb.png", roles=["thumbnail"]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "item.json"
    item.set_self_href(str(path))
    path.write_text(json.dumps(item.to_dict(include_self_link=False)), encoding="utf-8")
    return path


def test_item_measures_and_renders_like_the_four_band_file(scene, tmp_path):
    item = _item(tmp_path / "items", scene)
    assert is_stac(item) and not is_stac(scene["four"])
    with stac_inputs(item) as (vrt,):
        with rasterio.open(vrt) as ds:
            assert ds.count == 4 and ds.descriptions == NAMES
            np.testing.assert_array_equal(ds.read(), scene["data"])
        m_item, m_four = measure_raster(vrt), measure_raster(scene["four"])
        assert m_item.context_text("en") == m_four.context_text("en")
        assert m_item.context_text("zh") == m_four.context_text("zh")
        assert image_for_model(vrt)[0] == image_for_model(scene["four"])[0]  # the same model input, byte for byte
    assert not (tmp_path / vrt).exists()  # the temporary VRT is gone


def test_asset_keys_as_common_names_and_catalog_folder(scene, tmp_path, capsys):
    item_path = _item(tmp_path / "cat" / "scene-1", scene, key_style="keys")
    # a catalog folder holding the item
    cat = pystac.Catalog(id="cat", description="test")
    item = pystac.Item.from_file(str(item_path))
    cat.add_item(item)
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    assert is_stac(tmp_path / "cat")
    rc = main(["measure", str(tmp_path / "cat"), "--json", "--no-progress"])
    cap = capsys.readouterr()
    via_cat = json.loads(cap.out)
    assert "[STAC]" in cap.err and "blue=blue, green=green, red=red, nir=nir" in cap.err  # the chosen assets are shown
    rc2 = main(["measure", str(scene["four"]), "--json", "--no-progress"])
    via_four = json.loads(capsys.readouterr().out)
    assert rc == rc2 == 0
    assert via_cat["dates"].keys() == via_four["dates"].keys() == {"image"}
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith("path")}  # noqa: E731 (file names differ)
    assert strip(via_cat["dates"]["image"]) == strip(via_four["dates"]["image"])
    assert via_cat["dates"]["image"]["classes"] and via_cat["area_method"] == via_four["area_method"]


def test_missing_band_names_item_and_band(scene, tmp_path, capsys):
    item = _item(tmp_path / "items", scene, names=("blue", "green", "red"))
    with pytest.raises(StacError, match=r"scene-1.*band nir"):
        with stac_inputs(item):
            pass
    assert main(["measure", str(item), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "scene-1" in err and "nir" in err and str(item) in err


def test_remote_href_refused(scene, tmp_path, monkeypatch):
    monkeypatch.delenv("GEOVL_STAC_REMOTE", raising=False)
    item = _item(tmp_path / "items", scene, href="https://example.com/B.tif")
    with pytest.raises(StacError, match=r"remote.*GEOVL_STAC_REMOTE"):
        with stac_inputs(item):
            pass


def test_bands_option_picks_order(scene, tmp_path):
    item = _item(tmp_path / "items", scene)
    with stac_inputs(item, bands="red,green,blue") as (vrt,):
        with rasterio.open(vrt) as ds:
            assert ds.descriptions == ("red", "green", "blue")
            np.testing.assert_array_equal(ds.read(), scene["data"][[2, 1, 0]])


def test_ask_and_map_take_an_item_like_the_four_band_file(scene, tmp_path, capsys, tiny_model_dir):
    item = _item(tmp_path / "items", scene)
    model = str(tiny_model_dir("qwen2-vl"))
    runs = {}
    for name, src in (("item", item), ("four", scene["four"])):
        assert (
            main(
                [
                    "ask",
                    "--image",
                    str(src),
                    "-q",
                    "How much water?",
                    "--model",
                    model,
                    "--device",
                    "cpu",
                    "--max-new-tokens",
                    "3",
                    "--json",
                ]
            )
            == 0
        )
        doc = json.loads(capsys.readouterr().out)
        out = tmp_path / f"{name}_flags.tif"
        assert (
            main(
                [
                    "map",
                    str(src),
                    "-q",
                    "Is there water?",
                    "--out",
                    str(out),
                    "--model",
                    model,
                    "--device",
                    "cpu",
                    "--tile",
                    "32",
                    "--overlap",
                    "0",
                    "--no-progress",
                    "--answer-from",
                    "choice",
                ]
            )
            == 0
        )
        capsys.readouterr()
        with rasterio.open(out) as ds:
            runs[name] = (doc, ds.read())
    (a, fa), (b, fb) = runs["item"], runs["four"]
    assert a["context"] == b["context"] and a["prompt"] == b["prompt"] and a["answer"] == b["answer"]
    np.testing.assert_array_equal(fa, fb)  # per-tile answers and P(yes) identical


def test_coarser_asset_resampled_onto_the_finest_grid_and_raster_bands_scale(scene, tmp_path):
    """A 20 m band with 10 m bands (Sentinel-2): nearest resampling onto the 10 m grid; scale/offset and
    nodata from ``raster:bands`` when the file has none."""
    item_path = _item(tmp_path / "items", scene)
    with rasterio.open(scene["four"]) as ds:
        p = {k: ds.profile[k] for k in ("crs", "dtype")} | {
            "width": ds.width // 2,
            "height": ds.height // 2,
            "transform": ds.transform @ rasterio.Affine.scale(2),
        }
    coarse = scene["data"][3, ::2, ::2]
    with rasterio.open(tmp_path / "nir20.tif", "w", driver="GTiff", count=1, **p) as dst:
        dst.write(coarse, 1)
    doc = json.loads(item_path.read_text())
    doc["assets"]["B4"]["href"] = os.path.relpath(tmp_path / "nir20.tif", item_path.parent)
    doc["assets"]["B4"]["raster:bands"] = [{"scale": 0.0001, "offset": -0.1, "nodata": 0}]
    item_path.write_text(json.dumps(doc))
    with stac_inputs(item_path) as (vrt,):
        with rasterio.open(vrt) as ds:
            assert (ds.width, ds.height) == (scene["data"].shape[2], scene["data"].shape[1])
            np.testing.assert_array_equal(ds.read(4), np.repeat(np.repeat(coarse, 2, 0), 2, 1))
            np.testing.assert_array_equal(ds.read(1), scene["data"][0])
            assert ds.scales[3] == pytest.approx(0.0001) and ds.offsets[3] == pytest.approx(-0.1)
            assert ds.nodatavals[3] == 0


def test_item_as_an_image_reference_in_conversion(scene, tmp_path):
    """``data convert`` (any adapter, through load_image) stores the same model input for an Item as for
    the 4-band GeoTIFF; a missing band becomes a reject with the reason."""
    from geovl.data.io import read_samples
    from geovl.imagery.decode import load_image

    good = _item(tmp_path / "good", scene)
    bad = _item(tmp_path / "bad", scene, names=("blue", "green", "red"))
    four = tmp_path / "four.tif"
    four.write_bytes(scene["four"].read_bytes())
    assert load_image(good).data == load_image(four).data
    from geovl.infer import image_bytes  # what `geovl infer` sends

    assert image_bytes(good) == image_bytes(four)
    rows = []
    for n, img in enumerate((good, four, bad)):
        rel = str(img.relative_to(tmp_path))  # image references inside the input's folder
        rows.append(
            {
                "id": f"s{n}",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": rel}, {"type": "text", "text": "Is there water?"}],
                    },
                    {"role": "assistant", "content": "yes"},
                ],
            }
        )
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    main(["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--no-progress"])
    got = {r["id"]: r for r in read_samples(out)}
    assert set(got) == {"s0", "s1"}
    img = lambda r: r["images"][0]["bytes"] if isinstance(r["images"][0], dict) else r["images"][0]  # noqa: E731
    assert img(got["s0"])[:8] == b"\x89PNG\r\n\x1a\n" and img(got["s0"]) == img(got["s1"])
    rejects = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and "nir" in json.dumps(rejects[0], ensure_ascii=False)
