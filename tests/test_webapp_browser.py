"""The web app. First in-process (the ChatApp handlers: conversation state with images in place,
retry, clear, limits, bad uploads, the measurement-panel hook, GeoTIFF previews, the zh/en string
tables), then `geovl ui --model tiny` driven in headless Chromium (selenium): Chinese title, switch to English and
back (labels, buttons, cards, panel heading all change), upload an image, click a quick question,
watch the streamed answer appear, ask a follow-up that relies on the earlier image. The answers
shown must be the local engine's answers for the same conversation (with the earlier image in the
prompt — without it the answer differs). Screenshot: test-artifacts/webapp.png.

Needs Debian's chromium + chromium-driver (`make browser-deps`, which `make test` runs); skipped
with that reason when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geovl.data.schema import assistant_turn, user_turn
from geovl.inference import ChatRequest, GenerationParams, LocalEngine
from geovl.ui.i18n import QUICK_QUESTIONS, t
from serve_util import Server, free_port, png, running

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FAMILY = "qwen2.5-vl"
MAX_NEW = 16
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="headless Chromium not installed: run `make browser-deps` (apt-get install chromium chromium-driver)",
)


def norm(s: str) -> str:
    """Letters, digits and CJK only: robust to Markdown rendering and whitespace in the page."""
    return "".join(ch for ch in s if ch.isalnum())


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = LocalEngine(str(tiny_model_dir(FAMILY)))
    yield e
    e.close()


@pytest.fixture(scope="module")
def ui(tiny_model_dir, tmp_path_factory, engine):
    tmp = tmp_path_factory.mktemp("ui")
    port = free_port()
    server = Server(
        ["ui", "--model", str(tiny_model_dir(FAMILY)), "--port", str(port), "--max-new-tokens", str(MAX_NEW)],
        tmp / "ui.log",
        port,
    )
    with running(server, path="/"):
        yield {"server": server, "engine": engine, "tmp": tmp}


# -- in-process: the handlers behind the page ---------------------------------------------------------
def drain(gen):
    """Run a handler generator to the end; (all yielded outputs, the last one)."""
    outs = list(gen)
    return outs, outs[-1]


def test_string_tables_match():
    from geovl.ui.i18n import LANGS, STRINGS

    assert set(STRINGS["zh"]) == set(STRINGS["en"])
    assert all(len(QUICK_QUESTIONS[lang]) == 4 for lang in LANGS)
    assert QUICK_QUESTIONS["zh"] == [
        "本季度耕地面积变化情况？",
        "疑似违规建设的分布区域？",
        "保护区边界是否被占用？",
        "近一年土地利用结构趋势？",
    ]
    for lang in LANGS:
        card = t("limits_card", lang, where="x", max_mb=20, max_images=8)
        assert "{" not in card and "20" in card and "8" in card


def test_conversation_keeps_images_in_place_retry_clear_and_panel_hook(engine, tmp_path):
    import gradio as gr

    from geovl.ui.webapp import ChatApp, Conversation, PanelResult

    seen = []

    def hook(ctx):
        seen.append(ctx)
        return PanelResult(markdown=f"{len(ctx.images)} images; {ctx.lang}")

    app = ChatApp(engine, panel_hook=hook, max_images=3, max_new_tokens=MAX_NEW)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(png(31))
    b.write_bytes(png(32, 70, 70))
    params = GenerationParams(max_new_tokens=MAX_NEW)

    outs, last = drain(
        app.respond({"text": "两张影像有什么变化？", "files": [str(a), str(b)]}, [], Conversation(), "zh", 0.0, MAX_NEW)
    )
    msg_box, history, conv, panel_md, _ = last
    want1 = engine.generate([ChatRequest([user_turn("两张影像有什么变化？", 2)], [png(31), png(32, 70, 70)])], params)[
        0
    ]
    assert history[-1] == {"role": "assistant", "content": want1}
    assert [p["path"] for p in history[0]["content"][:2]] == [str(a), str(b)] and history[0]["content"][
        2
    ] == "两张影像有什么变化？"
    assert conv.images == [png(31), png(32, 70, 70)] and conv.messages[-1] == assistant_turn(want1)
    assert len(outs) >= 3, "the answer is streamed in several updates"
    assert panel_md == "2 images; zh" and seen[-1].answer == want1 and seen[-1].images == conv.images

    # follow-up with no image: the earlier images stay in the prompt
    _, last = drain(app.respond({"text": "Is there water?", "files": []}, history, conv, "en", 0.0, MAX_NEW))
    _, history2, conv2, _, _ = last
    want2 = engine.generate([ChatRequest(conv.messages + [user_turn("Is there water?")], conv.images)], params)[0]
    assert history2[-1]["content"] == want2 and len(conv2.messages) == 4 and conv2.images == conv.images

    # retry regenerates the last answer from the same conversation
    _, last = drain(app.retry(history2, conv2, "en", 0.0, MAX_NEW))
    assert last[1] == history2 and last[2].messages == conv2.messages

    # limits: a fourth image, a broken file, an empty message
    c = tmp_path / "c.png"
    c.write_bytes(png(33))
    with pytest.raises(gr.Error, match="3"):
        drain(app.respond({"text": "more", "files": [str(a), str(b)]}, history2, conv2, "en", 0.0, MAX_NEW))
    bad = tmp_path / "broken.png"
    bad.write_bytes(png(34)[:100])
    with pytest.raises(gr.Error, match="broken.png"):
        drain(app.respond({"text": "x", "files": [str(bad)]}, [], Conversation(), "zh", 0.0, MAX_NEW))
    with pytest.raises(gr.Error):
        drain(app.respond({"text": "  ", "files": []}, [], Conversation(), "zh", 0.0, MAX_NEW))

    _, history3, conv3, panel3, _ = app.clear("en")
    assert history3 == [] and conv3.messages == [] and panel3 == t("panel_empty", "en")


def test_failed_turn_is_shown_and_replaced_by_the_next_question(engine, tmp_path):
    from geovl.ui.webapp import ChatApp, Conversation

    class Failing:
        name, preprocess = "failing", None

        def stream(self, request, params):
            yield "partial"
            raise RuntimeError("server went away")

    app = ChatApp(Failing())
    _, (_, history, conv, _, _) = drain(app.respond({"text": "q1", "files": []}, [], Conversation(), "en", 0.0, 8))
    assert history[-1]["content"].startswith(t("error_prefix", "en")) and "server went away" in history[-1]["content"]
    assert conv.messages[-1]["role"] == "user"  # kept for retry
    app.engine = engine
    _, (_, history, conv, _, _) = drain(app.respond({"text": "q2", "files": []}, history, conv, "en", 0.0, 8))
    assert [m["role"] for m in conv.messages] == ["user", "assistant"] and conv.messages[0] == user_turn("q2")


def test_geotiff_upload_is_rendered_for_display(engine, tmp_path):
    import numpy as np

    from geovl.imagery.geotiff import Raster, write_raster
    from geovl.ui.webapp import ChatApp

    arr = (np.random.default_rng(0).random((4, 40, 50)) * 3000).astype("uint16")
    tif = tmp_path / "scene.tif"
    write_raster(tif, Raster(arr, crs="EPSG:32650", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)))
    app = ChatApp(engine)
    data, shown = app.load_image(str(tif), "zh")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and shown.endswith(".png") and Path(shown).read_bytes() == data


@pytest.fixture(scope="module")
def browser(ui):  # only requested by the Chromium test
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1050",
        f"--user-data-dir={ui['tmp'] / 'chrome-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_bilingual_page_upload_quick_question_streaming_and_follow_up(ui, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    wait = WebDriverWait(
        d, 90, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )  # the page re-renders

    def text(css: str) -> str:
        els = d.find_elements(By.CSS_SELECTOR, css)
        return els[0].text if els else ""

    def bots() -> list[str]:
        return [e.text for e in d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")]

    def page_is(lang: str) -> bool:
        """Every label of the page is in ``lang`` (waited for: the page renders asynchronously)."""
        return (
            t("page_title", lang) in text("#title")
            and [text(f"#quick-{i}") for i in range(4)] == QUICK_QUESTIONS[lang]
            and t("panel_heading", lang).strip("# ") in text("#panel-heading")
            and text("#retry-btn") == t("retry", lang)
            and text("#clear-btn") == t("clear", lang)
            and t("about_card", lang).splitlines()[0].strip("# ") in text("#about-card")
            and t("limits_card", lang).splitlines()[0].strip("# ") in text("#limits-card")
            and d.find_element(By.CSS_SELECTOR, "#msg-input textarea").get_attribute("placeholder")
            == t("input_placeholder", lang)
        )

    d.get(ui["server"].url)
    wait.until(lambda _: page_is("zh"), "the Chinese page never rendered")
    assert "县域国土空间智能问答" in text("#title") and text("#quick-0") == "本季度耕地面积变化情况？"
    assert "测量与地图" in text("#panel-heading") and "面积、长度、数量等数值来自测量模块" in text("#limits-card")

    # English and back: every label follows
    d.find_element(By.CSS_SELECTOR, "#lang-switch [data-testid='English-radio-label']").click()
    wait.until(lambda _: page_is("en"), "the page did not switch to English")
    assert "County Land-Use Q&A" in text("#title") and "Measurements & maps" in text("#panel-heading")
    assert "come from the measurement module" in text("#limits-card")
    d.find_element(By.CSS_SELECTOR, "#lang-switch [data-testid='中文-radio-label']").click()
    wait.until(lambda _: page_is("zh"), "the page did not switch back to Chinese")

    # upload an image, click a quick question: the streamed answer appears
    img = png(21, 140, 112)
    path = ui["tmp"] / "scene.png"
    path.write_bytes(img)
    d.find_element(By.CSS_SELECTOR, "#msg-input input[type='file']").send_keys(str(path))
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#msg-input .thumbnails img"))
    d.find_element(By.CSS_SELECTOR, "#quick-0").click()

    engine, params = ui["engine"], GenerationParams(max_new_tokens=MAX_NEW)
    q1 = QUICK_QUESTIONS["zh"][0]
    a1 = engine.generate([ChatRequest([user_turn(q1, 1)], [img])], params)[0]
    wait.until(lambda _: bots() and bots()[0].strip())  # the assistant message is no longer empty
    wait.until(lambda _: norm(bots()[0]) == norm(a1), f"first answer never became {a1!r}")
    assert d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user'] img"), (
        "the uploaded image is shown in the chat"
    )
    assert not d.find_elements(By.CSS_SELECTOR, "#msg-input .thumbnails img"), "the message box was emptied"

    # a follow-up without a new image: answered with the earlier image in the prompt
    q2 = "这张影像里有水体吗？"
    history = [user_turn(q1, 1), assistant_turn(a1), user_turn(q2)]
    a2 = engine.generate([ChatRequest(history, [img])], params)[0]
    without_image = engine.generate([ChatRequest([user_turn(q1), assistant_turn(a1), user_turn(q2)], [])], params)[0]
    assert norm(a2) != norm(without_image)
    box = d.find_element(By.CSS_SELECTOR, "#msg-input textarea")
    box.send_keys(q2)
    box.send_keys(Keys.ENTER)
    wait.until(lambda _: len(bots()) == 2 and norm(bots()[1]) == norm(a2), f"follow-up answer never became {a2!r}")
    users = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")]
    assert any(q2 in u for u in users)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webapp.png"
    d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    d.find_element(By.CSS_SELECTOR, "#clear-btn").click()
    wait.until(lambda _: not bots())


@needs_chromium
def test_video_upload_and_dated_geotiff_series_in_the_browser(ui, browser, tmp_path):
    """In the page: attach an MP4 (a player appears in the chat), ask in Chinese, the streamed answer is the
    local engine's for that video; then upload two dated GeoTIFFs in the time-series card (dates read from the
    file names, shown in date order with previews) and ask in English: the answer is the engine's for the one
    dated two-image turn. Screenshot: test-artifacts/webapp-video.png."""
    import numpy as np
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from geovl.imagery.geotiff import Raster, write_raster
    from geovl.imagery.video import encode_mp4
    from geovl.synth.series_qa import date_preamble
    from geovl.ui.webapp import ChatApp

    d, engine = browser, ui["engine"]
    params = GenerationParams(max_new_tokens=MAX_NEW)
    wait = WebDriverWait(d, 90, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])

    def bots() -> list[str]:
        return [e.text for e in d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")]

    d.get(ui["server"].url)
    wait.until(lambda _: t("page_title", "zh") in d.find_element(By.CSS_SELECTOR, "#title").text)
    assert t("ts_heading", "zh").splitlines()[0].strip("# ") in d.find_element(By.CSS_SELECTOR, "#ts-heading").text

    # a video in the message box, a question in Chinese
    rng = np.random.default_rng(5)
    mp4 = encode_mp4([rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(6)], fps=2)
    (video := tmp_path / "drone.mp4").write_bytes(mp4)
    d.find_element(By.CSS_SELECTOR, "#msg-input input[type='file']").send_keys(str(video))
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#msg-input .thumbnails > *"), "no thumbnail for the video")
    q = "视频中的工地有什么变化？"
    box = d.find_element(By.CSS_SELECTOR, "#msg-input textarea")
    box.send_keys(q)
    box.send_keys(Keys.ENTER)
    turn = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}
    a1 = engine.generate([ChatRequest([turn], [], [mp4])], params)[0]
    wait.until(lambda _: bots() and norm(bots()[0]) == norm(a1), f"video answer never became {a1!r}")
    assert d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user'] video"), "the video plays in the chat"
    d.find_element(By.CSS_SELECTOR, "#clear-btn").click()
    wait.until(lambda _: not bots())

    # two dated GeoTIFFs in the time-series card, uploaded late date first; a question in English
    paths = []
    for seed, day in ((7, "2022-06-01"), (8, "2019-06-01")):
        arr = (np.random.default_rng(seed).random((3, 40, 50)) * 3000).astype("uint16")
        p = tmp_path / f"county_{day}.tif"
        write_raster(p, Raster(arr, crs="EPSG:32650", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)))
        paths.append(str(p))
    d.find_element(By.CSS_SELECTOR, "#ts-files input[type='file']").send_keys("\n".join(paths))
    status = lambda: d.find_element(By.CSS_SELECTOR, "#ts-status").text  # noqa: E731
    wait.until(lambda _: "2019-06-01" in status() and "2022-06-01" in status(), "the dates were never shown")
    assert status().index("2019-06-01") < status().index("2022-06-01"), "date order"
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#ts-gallery img")) == 2, "no previews")
    q2 = "In which year did buildings appear on the cropland?"
    d.find_element(By.CSS_SELECTOR, "#msg-input textarea").send_keys(q2)
    d.find_element(By.CSS_SELECTOR, "#ts-ask").click()
    app = ChatApp(engine)
    rendered = [app.load_image(p, "zh")[0] for p in reversed(paths)]  # date order
    text = date_preamble(["2019-06-01", "2022-06-01"], "zh") + q2
    a2 = engine.generate([ChatRequest([user_turn(text, 2)], rendered)], params)[0]
    wait.until(lambda _: bots() and norm(bots()[0]) == norm(a2), f"time-series answer never became {a2!r}")
    users = d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")
    assert any("影像1（2019-06-01）" in u.text for u in users)
    assert sum(len(u.find_elements(By.CSS_SELECTOR, "img")) for u in users) == 2, "both dated images in the chat"

    d.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webapp-video.png"
    d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
