"""`geovl serve` geo routes over real HTTP (a server subprocess; the official openai client for the
chat-completions extension): `/v1/geo/measure` returns areas equal to the synth truth (JSON with
data URIs or bare base64, and multipart uploads give the same document), `/v1/geo/ask` returns the
measurement with the answer — the answer a local engine gives for the same grounded prompt — and
`"geovl": {"grounded": true}` on chat completions does the same in the OpenAI shape (plain and
streamed) while normal requests are untouched. Bad inputs (no CRS, not a GeoTIFF, too many pixels,
no key, bad options) get clear 4xx errors."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

from geovl.geo.ask import grounded_answer
from geovl.geo.measure import measure_raster
from geovl.imagery.geotiff import Raster, write_raster
from geovl.inference import GenerationParams, LocalEngine
from geovl.synth import synthesize
from serve_util import Server, data_uri, free_port, png, running

FAMILY = "qwen2.5-vl"
KEY = "geo-key"
MAX = 8
MAX_PIXELS = 20_000  # a 112 x 112 scene fits, a 200 x 200 raster does not


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    out = tmp_path_factory.mktemp("geoapi") / "county"
    synthesize(
        out,
        scenes=2,
        seed=4,
        size=112,
        langs="en",
        questions_per_scene=1,
        split="train=1",
        tasks="presence",
        progress=False,
    )
    scenes = [json.loads(x) for x in (out / "scenes.jsonl").read_text("utf-8").splitlines()]
    sc = max(scenes, key=lambda s: s["change"]["cropland_gain_pixels"] + s["change"]["cropland_loss_pixels"])
    assert sc["change"]["cropland_gain_pixels"] and sc["change"]["cropland_loss_pixels"], (
        "seed 4 has cropland gain and loss"
    )
    f = {
        "image": out / sc["geotiffs"]["after"],
        "before": out / sc["geotiffs"]["before"],
        "classes": out / sc["class_maps"]["after"],
        "before_classes": out / sc["class_maps"]["before"],
    }
    return sc, f


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    model = str(tiny_model_dir(FAMILY))
    tmp = tmp_path_factory.mktemp("geoapi-srv")
    port = free_port()
    srv = Server(
        [
            "serve",
            "--model",
            model,
            "--served-model-name",
            "tiny",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--max-pixels",
            str(MAX_PIXELS),
            "--log-level",
            "warning",
        ],
        tmp / "serve.log",
        port,
    )
    with running(srv):
        engine = LocalEngine(model)
        yield {"srv": srv, "engine": engine, "tmp": tmp}
        engine.close()


def tif_uri(path) -> str:
    return data_uri(path.read_bytes(), "image/tiff")


def post(server, route: str, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(
        server["srv"].url + route, headers={"Authorization": f"Bearer {KEY}"} | (headers or {}), timeout=120, **kw
    )


PATH_KEYS = ("inputs", "classes_path", "image_path")


def no_paths(doc):
    """A measurement document without its file names (the server names files after the fields)."""
    if isinstance(doc, dict):
        return {k: no_paths(v) for k, v in doc.items() if k not in PATH_KEYS}
    return [no_paths(v) for v in doc] if isinstance(doc, list) else doc


def test_measure_over_http_equals_the_synth_truth(server, county):
    sc, f = county
    body = {
        "image": tif_uri(f["image"]),
        "before": tif_uri(f["before"]),
        "classes": tif_uri(f["classes"]),
        "before_classes": base64.b64encode(f["before_classes"].read_bytes()).decode(),  # bare base64 works too
        "class_table": "synth",
        "geojson": True,
        "lang": "en",
    }
    r = post(server, "/v1/geo/measure", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    m = doc["measurement"]
    assert doc["object"] == "geovl.measurement" and doc["lang"] == "en" and m["crs"] == "EPSG:32650"
    assert m["classes_source"] == "supplied" and m["class_table"]["name"] == "synth"
    for label in ("before", "after"):
        got = {c["key"]: c for c in m["dates"][label]["classes"]}
        for key, px in sc[label]["class_pixels"].items():
            assert got[key]["pixels"] == px, (label, key)
            assert got[key]["m2"] == px * 100.0 and got[key]["ha"] == px / 100  # 10 m pixels
            assert got[key]["mu"] == pytest.approx(px * 100 * 15 / 10000, rel=1e-12)
    crop = next(r for r in m["change"]["per_class"] if r["key"] == "cropland")
    ch = sc["change"]
    assert crop["gain_pixels"] == ch["cropland_gain_pixels"] and crop["loss_pixels"] == ch["cropland_loss_pixels"]
    assert crop["net"]["m2"] == ch["cropland_net_pixels"] * 100.0
    assert m["change"]["changed_pixels"] == ch["changed_pixels"]
    got_tr = {f"{t['from_key']}->{t['to_key']}": t["pixels"] for t in m["change"]["transitions"]}
    assert got_tr == ch["transitions"]
    # the context is the model's text for these figures; the patches come as EPSG:4326 GeoJSON
    local = measure_raster(
        f["image"], classes=f["classes"], before=f["before"], before_classes=f["before_classes"], class_table="synth"
    )
    assert doc["context"] == local.context_text("en")
    assert no_paths(m) == no_paths(json.loads(json.dumps(local.to_json())))
    assert m["inputs"]["after"] == {"classes": "classes.tif", "image": "image.tif"}  # no server paths leak
    assert (
        doc["geojson"]["type"] == "FeatureCollection"
        and len(doc["geojson"]["features"]) == m["change"]["patches"]["total"]
    )
    lon, lat = doc["geojson"]["features"][0]["properties"]["lon"], doc["geojson"]["features"][0]["properties"]["lat"]
    assert 116 < lon < 117 and 36 < lat < 37

    # multipart uploads give the same document
    files = {k: (p.name, p.read_bytes(), "image/tiff") for k, p in f.items()}
    r2 = post(server, "/v1/geo/measure", files=files, data={"class_table": "synth", "lang": "en", "geojson": "true"})
    assert r2.status_code == 200, r2.text
    assert r2.json() == doc

    # one date, no class raster: classes derived from the 4 bands, and the response says so
    r3 = post(server, "/v1/geo/measure", json={"image": tif_uri(f["image"])})
    d3 = r3.json()["measurement"]
    assert r3.status_code == 200 and d3["classes_source"] == "derived" and d3["change"] is None
    assert sum(c["pixels"] for c in d3["dates"]["image"]["classes"]) == 112 * 112
    assert "光谱指数推导" in r3.json()["context"]


def test_grounded_ask_returns_the_measurement_with_the_answer(server, county):
    sc, f = county
    q = "耕地面积增加了多少公顷？"
    want = grounded_answer(
        server["engine"],
        f["image"],
        q,
        before_path=f["before"],
        classes=f["classes"],
        before_classes=f["before_classes"],
        class_table="synth",
        params=GenerationParams(max_new_tokens=MAX),
    )
    body = {
        "question": q,
        "image": tif_uri(f["image"]),
        "before": tif_uri(f["before"]),
        "classes": tif_uri(f["classes"]),
        "before_classes": tif_uri(f["before_classes"]),
        "class_table": "synth",
        "max_tokens": MAX,
        "model": "tiny",
    }
    r = post(server, "/v1/geo/ask", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "geovl.grounded_answer" and doc["model"] == "tiny" and doc["lang"] == "zh"
    assert doc["answer"] == want.answer and doc["prompt"] == want.prompt and doc["context"] == want.context
    assert no_paths(doc["measurement"]) == no_paths(json.loads(json.dumps(want.measurement.to_json())))
    crop = {c["key"]: c for c in doc["measurement"]["dates"]["after"]["classes"]}["cropland"]
    assert crop["pixels"] == sc["after"]["class_pixels"]["cropland"]
    assert f"耕地 {crop['km2']:.4f}平方公里（{crop['ha']:.2f}公顷" in doc["prompt"]
    assert doc["usage"]["completion_tokens"] >= 1 and doc["usage"]["prompt_tokens"] > 100

    # the same through the OpenAI client: chat completions with the "geovl" request extension
    client = openai.OpenAI(base_url=server["srv"].url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": tif_uri(f["before"])}},
                {"type": "image_url", "image_url": {"url": tif_uri(f["image"])}},
                {"type": "text", "text": q},
            ],
        }
    ]
    ext = {
        "geovl": {
            "grounded": True,
            "classes": [tif_uri(f["before_classes"]), tif_uri(f["classes"])],
            "class_table": "synth",
        }
    }
    resp = client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX, extra_body=ext)
    assert resp.choices[0].message.content.strip() == want.answer
    geo = resp.model_extra["geovl"]
    assert geo["grounded"] is True and geo["prompt"] == want.prompt and geo["measurement"] == doc["measurement"]
    chunks = list(
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX, extra_body=ext, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == want.answer
    assert chunks[0].model_extra["geovl"]["context"] == want.context
    assert all("geovl" not in (c.model_extra or {}) for c in chunks[1:])
    # a normal request (no extension) is untouched: no "geovl" member
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert "geovl" not in (plain.model_extra or {})
    off = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"geovl": {"grounded": False}},
    )
    assert "geovl" not in (off.model_extra or {}) and off.choices[0].message.content == plain.choices[0].message.content


def test_bad_inputs_get_clear_4xx(server, county):
    _, f = county
    tmp = server["tmp"]
    nocrs = tmp / "nocrs.tif"
    with pytest.warns(Warning):  # rasterio: not georeferenced
        write_raster(nocrs, Raster(np.ones((4, 30, 30), np.uint16)))
    big = tmp / "big.tif"
    write_raster(
        big,
        Raster(
            np.ones((1, 200, 200), np.uint8), crs="EPSG:32650", transform=(10.0, 0.0, 440000.0, 0.0, -10.0, 4065000.0)
        ),
    )

    def err(r, status, code):
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert e["code"] == code, e
        return e["message"]

    msg = err(post(server, "/v1/geo/measure", json={"image": tif_uri(nocrs)}), 400, "no_crs")
    assert "no CRS" in msg and "坐标系" in msg
    msg = err(post(server, "/v1/geo/measure", json={"image": data_uri(png(3))}), 400, "not_a_geotiff")
    assert "PNG" in msg and "GeoTIFF" in msg
    err(post(server, "/v1/geo/measure", files={"image": ("x.png", png(4), "image/png")}), 400, "not_a_geotiff")
    msg = err(post(server, "/v1/geo/measure", json={"image": tif_uri(big)}), 413, "image_too_many_pixels")
    assert "40000" in msg and str(MAX_PIXELS) in msg
    err(post(server, "/v1/geo/measure", json={"image": "data:image/tiff;base64,!!!"}), 400, "invalid_base64")
    err(post(server, "/v1/geo/measure", json={"image": "/etc/passwd"}), 400, "local_images_disabled")
    err(post(server, "/v1/geo/measure", json={}), 400, "missing_image")
    err(
        post(server, "/v1/geo/measure", json={"image": tif_uri(f["image"]), "class_table": "nope"}),
        400,
        "invalid_class_table",
    )
    err(post(server, "/v1/geo/measure", json={"image": tif_uri(f["image"]), "colour": "red"}), 422, "invalid_schema")
    msg = err(
        post(server, "/v1/geo/measure", json={"image": tif_uri(f["image"]), "classes": tif_uri(f["before"])}),
        400,
        "measure_error",
    )
    assert msg == "classes.tif: a class raster has one band, this one has 4"
    err(
        post(server, "/v1/geo/measure", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
        400,
        "invalid_multipart",
    )
    err(
        post(
            server,
            "/v1/geo/measure",
            content=b"--x\r\nbroken",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        400,
        "missing_image",
    )
    err(
        post(server, "/v1/geo/measure", files={"imag": ("a.tif", f["image"].read_bytes(), "image/tiff")}),
        422,
        "invalid_schema",
    )
    r = httpx.post(server["srv"].url + "/v1/geo/measure", json={"image": tif_uri(f["image"])})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    err(post(server, "/v1/geo/ask", json={"question": "?", "classes": tif_uri(f["classes"])}), 400, "missing_image")
    err(
        post(server, "/v1/geo/ask", json={"question": "?", "image": tif_uri(f["image"]), "model": "other"}),
        404,
        "model_not_found",
    )
    err(
        post(server, "/v1/geo/ask", json={"question": "?", "image": tif_uri(f["image"]), "max_tokens": 10**6}),
        400,
        "max_tokens_too_large",
    )
    # the chat extension: GeoTIFFs only, one or two of them, in the last user message
    chat = "/v1/chat/completions"
    one = lambda url: [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "q"}]}
    ]
    err(post(server, chat, json={"messages": one(data_uri(png(5))), "geovl": {"grounded": True}}), 400, "not_a_geotiff")
    err(post(server, chat, json={"messages": one(tif_uri(nocrs)), "geovl": {"grounded": True}}), 400, "no_crs")
    err(
        post(server, chat, json={"messages": [{"role": "user", "content": "q"}], "geovl": {"grounded": True}}),
        400,
        "invalid_geovl",
    )
    err(
        post(server, chat, json={"messages": one(tif_uri(f["image"])), "geovl": {"grounded": True, "clases": []}}),
        422,
        "invalid_schema",
    )
    err(
        post(
            server, chat, json={"messages": one(tif_uri(f["image"])), "geovl": {"classes": [tif_uri(f["classes"])] * 2}}
        ),
        400,
        "invalid_geovl",
    )
