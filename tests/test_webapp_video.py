"""The web app's video uploads and time-series card, in-process (the ChatApp handlers behind the page;
the page itself is driven in headless Chromium in tests/test_webapp_browser.py).

- A video attached in the message box is answered exactly as the local engine answers the same
  conversation with that video; it stays in the conversation for follow-ups; a browser-playable MP4
  is shown as uploaded, an AVI as an MP4 of the sampled frames; bad videos (truncated, audio only, an
  image disguised as .mp4 is simply an image) are refused naming the file and the reason.
- Dated GeoTIFFs: dates typed, read from file names or from ``TIFFTAG_DATETIME``; date order; every
  unusable series refused with its reason in zh/en; the question is asked as one N-image turn whose text
  is the training data's dated prompt (:func:`geovl.synth.series_qa.date_preamble`) and the answer equals
  the local engine's for that turn.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from geovl.data.schema import user_turn
from geovl.imagery.video import encode_mp4, probe
from geovl.inference import ChatRequest, GenerationParams, LocalEngine
from geovl.ui.i18n import t
from serve_util import png

FAMILY = "qwen2.5-vl"
MAX_NEW = 8


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = LocalEngine(str(tiny_model_dir(FAMILY)))
    yield e
    e.close()


def frames(seed: int, n: int = 6, w: int = 64, h: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def avi(seed: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=2)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in frames(seed):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def drain(gen):
    outs = list(gen)
    return outs, outs[-1]


def video_turn(text: str) -> dict:
    return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}


def test_video_upload_answer_follow_up_preview_and_bad_videos(engine, tmp_path):
    import gradio as gr

    from geovl.ui.webapp import ChatApp, Conversation

    app = ChatApp(engine, max_new_tokens=MAX_NEW, max_videos=2)
    params = GenerationParams(max_new_tokens=MAX_NEW)
    mp4 = encode_mp4(frames(1), fps=2)
    (v := tmp_path / "flight.mp4").write_bytes(mp4)
    q = "视频中是否出现了新建筑？"
    outs, (_, history, conv, _, _) = drain(
        app.respond({"text": q, "files": [str(v)]}, [], Conversation(), "zh", 0, MAX_NEW)
    )
    want = engine.generate([ChatRequest([video_turn(q)], [], [mp4])], params)[0]
    assert history[-1] == {"role": "assistant", "content": want} and len(outs) >= 3
    assert history[0]["content"] == [{"path": str(v)}, q]  # the player shows the upload itself
    assert conv.videos == [mp4] and conv.images == [] and conv.messages[0] == video_turn(q)

    # a follow-up keeps the video in the prompt (the answer differs without it)
    _, (_, history2, conv2, _, _) = drain(
        app.respond({"text": "Is there water?", "files": []}, history, conv, "en", 0, 8)
    )
    want2 = engine.generate([ChatRequest(conv.messages + [user_turn("Is there water?")], [], [mp4])], params)[0]
    assert history2[-1]["content"] == want2 and conv2.videos == [mp4]

    # an AVI with an image in one turn: the chat shows an MP4 of the sampled frames
    (a := tmp_path / "site.avi").write_bytes(avi(2))
    (p := tmp_path / "before.png").write_bytes(png(3))
    _, (_, history3, conv3, _, _) = drain(
        app.respond({"text": "Compare", "files": [str(p), str(a)]}, [], Conversation(), "en", 0, MAX_NEW)
    )
    shown = history3[0]["content"][1]["path"]
    assert shown.endswith(".mp4") and shown.startswith(str(app.preview_dir))
    assert probe(shown).width == 64 and probe(shown).codec == "h264"
    assert conv3.messages[0]["content"] == [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Compare"}]
    want3 = engine.generate([ChatRequest(conv3.messages[:1], [png(3)], [avi(2)])], params)[0]
    assert history3[-1]["content"] == want3

    # bad videos: named, with the reason; the limit on videos per conversation
    (bad := tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    with pytest.raises(gr.Error, match="cut.mp4.*truncated"):
        drain(app.respond({"text": "x", "files": [str(bad)]}, [], Conversation(), "en", 0, 8))
    (txt := tmp_path / "notes.mp4").write_bytes(b"not a video at all, just text " * 10)
    with pytest.raises(gr.Error, match="notes.mp4"):
        drain(app.respond({"text": "x", "files": [str(txt)]}, [], Conversation(), "zh", 0, 8))
    with pytest.raises(gr.Error, match="2"):
        drain(app.respond({"text": "more", "files": [str(v)]}, history3, Conversation(videos=[mp4, mp4]), "en", 0, 8))
    card = app.limits_card("zh")
    assert "64 MB" in card and "60 分钟" in card and "最多 2 个" in card


def geotiff(path, seed: int, when: str | None = None):
    import rasterio

    from geovl.imagery.geotiff import Raster, write_raster

    arr = (np.random.default_rng(seed).random((3, 40, 50)) * 3000).astype("uint16")
    write_raster(path, Raster(arr, crs="EPSG:32650", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)))
    if when:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(TIFFTAG_DATETIME=when)
    return str(path)


def test_dates_from_box_names_and_tags_and_every_refusal(tmp_path):
    from geovl.ui.timeseries import SeriesError, date_series

    a = geotiff(tmp_path / "county_2021-06-01.tif", 1)
    b = geotiff(tmp_path / "S2_20190601_T50.tif", 2)
    c = geotiff(tmp_path / "scene.tif", 3, when="2023:06:01 10:30:00")
    items = date_series([a, b, c])
    assert [(i.date, i.source) for i in items] == [
        ("2019-06-01", "name"),
        ("2021-06-01", "name"),
        ("2023-06-01", "tag"),
    ]
    assert [i.path for i in items] == [b, a, c]
    typed = date_series([a, b], "2020/01/05，20180301")
    assert [(i.date, i.source, i.path) for i in typed] == [("2018-03-01", "typed", b), ("2020-01-05", "typed", a)]

    def refused(key, *args):
        with pytest.raises(SeriesError) as e:
            date_series(*args)
        assert e.value.key == key
        for lang in ("zh", "en"):
            assert "{" not in t(key, lang, **e.value.fmt)
        return e.value

    refused("ts_err_too_few", [a])
    refused("ts_err_too_many", [a, b, c], "", 2)
    refused("ts_err_count", [a, b], "2019-01-01")
    assert refused("ts_err_bad_date", [a, b], "2019-02-30 2020-01-01").fmt["value"] == "2019-02-30"
    d = geotiff(tmp_path / "undated.tif", 4)
    assert refused("ts_err_no_date", [a, d]).fmt["name"] == "undated.tif"
    e = geotiff(tmp_path / "again_2021-06-01.tif", 5)
    refused("ts_err_duplicate", [a, e])


def test_time_series_question_is_one_dated_multi_image_turn(engine, tmp_path):
    import gradio as gr

    from geovl.synth.series_qa import date_preamble
    from geovl.ui.webapp import ChatApp, Conversation

    app = ChatApp(engine, max_new_tokens=MAX_NEW, max_images=4)
    files = [
        geotiff(tmp_path / "county_2023-06-01.tif", 1),
        geotiff(tmp_path / "county_2019-06-01.tif", 2),
        geotiff(tmp_path / "county_2021-06-01.tif", 3),
    ]
    md, gallery = app.series_preview(files, "", "zh")
    assert "2019-06-01" in md and md.index("2019-06-01") < md.index("2021-06-01") < md.index("2023-06-01")
    assert "文件名" in md
    assert [cap for _, cap in gallery] == ["影像1（2019-06-01）", "影像2（2021-06-01）", "影像3（2023-06-01）"]
    assert [open(path, "rb").read(4) for path, _ in gallery] == [b"\x89PNG"] * 3  # rendered for the browser

    q = "这块耕地是哪一年开始被建筑占用的？"
    outs, (_, history, conv, _, _) = drain(
        app.ask_series(files, "", {"text": q, "files": []}, [], Conversation(), "zh", 0, MAX_NEW)
    )
    dates = ["2019-06-01", "2021-06-01", "2023-06-01"]
    text = date_preamble(dates, "zh") + q
    assert text.startswith("影像1（2019-06-01）、影像2（2021-06-01）、影像3（2023-06-01）")
    rendered = [app.load_image(p, "zh")[0] for p in (files[1], files[2], files[0])]  # date order
    want = engine.generate([ChatRequest([user_turn(text, 3)], rendered)], GenerationParams(max_new_tokens=MAX_NEW))[0]
    assert conv.messages[0] == user_turn(text, 3) and conv.images == rendered
    assert history[-1] == {"role": "assistant", "content": want} and history[0]["content"][-1] == text
    assert len(outs) >= 3

    # English, the default question, typed dates (upload order); a bad series is a clear error
    _, (_, h2, c2, _, _) = drain(
        app.ask_series(files[:2], "2020-01-01 2018-01-01", {}, [], Conversation(), "en", 0, MAX_NEW)
    )
    assert c2.messages[0]["content"][-1]["text"] == (
        date_preamble(["2018-01-01", "2020-01-01"], "en") + t("ts_default_question", "en")
    )
    assert c2.images == [app.load_image(files[1], "en")[0], app.load_image(files[0], "en")[0]]
    with pytest.raises(gr.Error, match="at least two"):
        drain(app.ask_series(files[:1], "", {"text": q}, [], Conversation(), "en", 0, MAX_NEW))
    md, _ = app.series_preview(files[:2], "2019-01-01", "en")
    assert md.startswith(t("error_prefix", "en")) and "1 dates typed for 2 files" in md
