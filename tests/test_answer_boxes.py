"""Boxes served beside the text: the API's `geovl.boxes` extension (read with the official `openai`
client) and the web app's box panel (drawn boxes + GeoJSON download)."""

from __future__ import annotations

import io
import json

import numpy as np
import openai
from PIL import Image

from geovl.inference.answer_boxes import answer_boxes, boxes_geojson
from geovl.models.box_format import frame_for, render
from geovl.models.registry import get_family
from serve_util import data_uri, png


class _Proc:
    class image_processor:  # noqa: N801
        size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}


class BoxEngine:
    """Answers every request with two boxes in Qwen2.5-VL's convention for the last image."""

    name = "box-stub"
    spectral = None
    preprocess = None

    def __init__(self):
        self.family = get_family("qwen2.5-vl")
        self.processor = _Proc()
        self.truth = [
            {"bbox": [10.0, 20.0, 60.0, 50.0], "label": "building"},
            {"bbox": [70.0, 5.0, 100.0, 40.0], "label": "building"},
        ]

    def _text(self, req):
        if not req.images:
            return "hello"
        w, h = Image.open(io.BytesIO(req.images[-1])).size
        return render(frame_for(self.family, w, h, 56 * 56, 448 * 448), self.truth)

    def generate(self, requests, params):
        return [self._text(r) for r in requests]

    def stream(self, req, params):
        yield self._text(req)


def test_api_returns_boxes_as_an_extension_the_openai_client_keeps():
    from fastapi.testclient import TestClient

    from geovl.serve.api import ServerConfig, create_app

    eng = BoxEngine()
    app = create_app(eng, ServerConfig(served_model_name="m"))
    with TestClient(app, base_url="http://127.0.0.1") as http:  # the API answers loopback Host names only
        client = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="EMPTY", http_client=http)
        img = png(1, 112, 84)
        r = client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri(img)}},
                        {"type": "text", "text": "Locate every building"},
                    ],
                }
            ],
        )
        assert r.choices[0].message.content.startswith('[{"bbox_2d"')  # the text is untouched
        boxes = r.model_extra["geovl"]["boxes"]
        assert boxes["image"] == 0 and (boxes["width"], boxes["height"]) == (112, 84)
        for got, want in zip(boxes["boxes"], eng.truth):
            assert got["label"] == "building"
            assert (
                max(abs(a - b) for a, b in zip(got["bbox"], want["bbox"])) <= 1.0
            )  # ≤ one resized pixel (112 → 112 px)
        # a text-only request has no boxes member
        r2 = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert r2.model_extra.get("geovl") is None


def test_answer_without_boxes_and_geojson_of_boxes():
    eng = BoxEngine()
    img = png(2, 64, 64)
    assert answer_boxes(eng, [img], "There are two buildings.") is None
    info = answer_boxes(eng, [png(3, 32, 32), img], eng._text(type("R", (), {"images": [img]})))
    assert info["image"] == 1 and len(info["boxes"]) == 2
    gj = boxes_geojson(info)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2 and "pixel" in gj["geovl"]["coordinates"]
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5


def test_web_app_box_panel_draws_and_offers_geojson():
    from geovl.ui.webapp import ChatApp

    eng = BoxEngine()
    app = ChatApp(eng, lang="en")
    img = png(4, 112, 84)
    text = eng._text(type("R", (), {"images": [img]}))
    res = app.box_panel([img], text, "en")
    assert res is not None and "Download GeoJSON" in res.markdown
    path = res.markdown.split("/gradio_api/file=")[1].split(")")[0]
    gj = json.loads(open(path, encoding="utf-8").read())
    assert len(gj["features"]) == 2
    drawn = np.asarray(res.image.convert("RGB"))
    assert drawn.shape[:2] == (168, 224) and ((drawn == (230, 40, 40)).all(axis=2)).any()  # red boxes, drawn 2x
    assert app.box_panel([img], "no boxes here", "zh") is None
    zh = app.box_panel([img], text, "zh")
    assert "下载 GeoJSON" in zh.markdown


def test_the_geojson_link_downloads_from_the_running_web_app(monkeypatch):
    import httpx

    from geovl.ui.webapp import ChatApp, launch
    from serve_util import free_port

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    eng = BoxEngine()
    app = ChatApp(eng, lang="en")
    img = png(5, 112, 84)
    res = app.box_panel([img], eng._text(type("R", (), {"images": [img]})), "en")
    link = res.markdown.split("](")[1].split(")")[0]
    port = free_port()
    launch(app, port=port, block=False)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}{link}", timeout=30)
        assert r.status_code == 200 and r.json()["type"] == "FeatureCollection"
    finally:
        import gradio as gr

        gr.close_all()


def test_streamed_answer_carries_boxes_on_its_final_chunk_with_the_openai_client():
    from fastapi.testclient import TestClient

    from geovl.serve.api import ServerConfig, create_app

    eng = BoxEngine()
    app = create_app(eng, ServerConfig(served_model_name="m"))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        client = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="EMPTY", http_client=http)
        img = png(6, 112, 84)
        stream = client.chat.completions.create(
            model="m",
            stream=True,
            stream_options={"include_usage": True},
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri(img)}},
                        {"type": "text", "text": "框出所有建筑"},
                    ],
                }
            ],
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith('[{"bbox_2d"')  # the streamed text is untouched
        with_ext = [c for c in chunks if (c.model_extra or {}).get("geovl")]
        assert len(with_ext) == 1 and with_ext[0].choices[0].finish_reason == "stop"  # only the final chunk
        boxes = with_ext[0].model_extra["geovl"]["boxes"]
        assert boxes["image"] == 0 and (boxes["width"], boxes["height"]) == (112, 84)
        assert len(boxes["boxes"]) == len(eng.truth)
        for got, want in zip(boxes["boxes"], eng.truth):
            assert got["label"] == "building"
            assert max(abs(a - b) for a, b in zip(got["bbox"], want["bbox"])) <= 1.0
        assert chunks[-1].usage is not None and chunks[-1].choices == []  # the usage chunk still comes last
        # an answer without boxes: no extension member on any chunk
        plain = list(
            client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "hello"}])
        )
        assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == "hello"
        assert all((c.model_extra or {}).get("geovl") is None for c in plain)
        assert plain[-1].choices[0].finish_reason == "stop"
