"""GeoTIFFs in the web app: the measurement panel and grounded chat (geovl.ui.geo_panel).

In-process first (the ChatApp handlers with the GeoPanel extension): two synthetic county GeoTIFFs
plus their class maps → the panel shows the synth-truth areas; the chat answer is exactly the local
engine's answer to the grounded prompt built from the same Measurement (so panel and prompt carry
the same numbers); follow-ups and retries stay grounded; plain PNGs keep the plain chat path; a
TIFF without a CRS, a missing class raster and the date-order selector; the "Map flagged tiles"
button writes the flags map and its downloads. Then `geovl ui --model tiny` in headless Chromium:
upload the two GeoTIFFs in the chat and the class maps (+ classes.json) in the panel, ask, see the
exact cropland area in the panel table and the grounded answer in the chat, click the map button,
see the preview image. Screenshot: test-artifacts/geo_webapp.png.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geovl.data.schema import user_turn
from geovl.geo.ask import build_grounded, grounded_answer
from geovl.geo.tiles import image_for_model
from geovl.geo.units import all_units, fmt
from geovl.inference import ChatRequest, GenerationParams, LocalEngine
from geovl.synth import synthesize
from geovl.ui.i18n import t
from serve_util import Server, free_port, running

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FAMILY = "qwen2.5-vl"
MAX_NEW = 16
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium not installed: run `make browser-deps` (apt-get install chromium chromium-driver)",
)


def norm(s: str) -> str:
    return "".join(ch for ch in s if ch.isalnum())


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    out = tmp_path_factory.mktemp("geoweb") / "county"
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
    assert sc["after"]["class_pixels"]["cropland"] and sc["change"]["cropland_gain_pixels"]
    f = {
        "after": out / sc["geotiffs"]["after"],
        "before": out / sc["geotiffs"]["before"],
        "after_classes": out / sc["class_maps"]["after"],
        "before_classes": out / sc["class_maps"]["before"],
        "table": out / "classes.json",
        "png": out / sc["images"]["after"],
    }
    return sc, f


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = LocalEngine(str(tiny_model_dir(FAMILY)))
    yield e
    e.close()


def drain(gen):
    outs = list(gen)
    return outs, outs[-1]


def panel_text(outs) -> str | None:
    """The panel Markdown last set by a handler's outputs (``gr.skip()`` keeps the previous one)."""
    texts = [o[3] for o in outs if isinstance(o[3], str)]
    return texts[-1] if texts else None


def crop_cells(sc, label="after") -> list[str]:
    """The panel's cropland row from the synth truth: m², km², 公顷, 亩 of pixels × 100 m²."""
    u = all_units(sc[label]["class_pixels"]["cropland"] * 100)
    return [fmt(u[k], k) for k in ("m2", "km2", "ha", "mu")]


class Recorder:
    """An engine that records requests; answers "yes" (map tiles) or streams a fixed text."""

    name, preprocess = "recorder", None

    def __init__(self):
        self.requests = []

    def generate(self, requests, params=None):
        self.requests += list(requests)
        return ["yes" for _ in requests]

    def stream(self, request, params=None):
        self.requests.append(request)
        yield from ("约", "6.66", "公顷")


def app_with(engine, tmp_path):
    from geovl.ui.geo_panel import GeoPanel
    from geovl.ui.webapp import ChatApp

    return ChatApp(engine, extension=GeoPanel(engine, work_dir=tmp_path / "geo"), max_new_tokens=MAX_NEW)


# -- in-process -------------------------------------------------------------------------------------------
def test_grounded_chat_and_panel_share_one_measurement(engine, county, tmp_path):
    from geovl.ui.webapp import Conversation

    sc, f = county
    app = app_with(engine, tmp_path)
    q = "耕地面积变化了多少公顷？"
    classes = [str(f["before_classes"]), str(f["after_classes"])]
    outs, last = drain(
        app.respond(
            {"text": q, "files": [str(f["before"]), str(f["after"])]},
            [],
            Conversation(),
            "zh",
            0.0,
            MAX_NEW,
            classes,
            "auto",
            "synth",
        )
    )
    _, history, conv, panel_md, panel_img = last
    want = grounded_answer(
        engine,
        f["after"],
        q,
        before_path=f["before"],
        classes=f["after_classes"],
        before_classes=f["before_classes"],
        class_table="synth",
        params=GenerationParams(max_new_tokens=MAX_NEW),
    )
    assert (
        history[-1]["content"].strip() == want.answer and conv.messages[-1]["content"][0]["text"].strip() == want.answer
    )
    # the panel came first (before generation), then the answer streamed, then the panel says it was grounded
    assert t("geo_generating", "zh") in outs[0][3] and "耕地 cropland" in outs[0][3]
    assert panel_md.endswith(t("geo_grounded", "zh")) and Path(panel_img.value["path"]).is_file()
    assert f"| 耕地 cropland | {' | '.join(crop_cells(sc))} |" in panel_md
    assert f"| 耕地 cropland | {' | '.join(crop_cells(sc, 'before'))} |" in panel_md
    # every class figure in the panel is the figure in the model's prompt
    m = want.measurement
    for d in (m.current, m.before):
        for c in d.classes:
            if c.pixels:
                u = all_units(c.m2)
                assert (
                    f"{fmt(u['km2'], 'km2')}平方公里（{fmt(u['ha'], 'ha')}公顷，{fmt(u['mu'], 'mu')}亩）" in want.prompt
                )
                assert (
                    f"| {fmt(u['m2'], 'm2')} | {fmt(u['km2'], 'km2')} | {fmt(u['ha'], 'ha')} | {fmt(u['mu'], 'mu')} |"
                    in panel_md
                )
    net = m.gain_loss("cropland")["net_m2"]
    assert net == sc["change"]["cropland_net_pixels"] * 100
    assert f"+{fmt(all_units(net)['ha'], 'ha')}" in panel_md and "变化矩阵" in panel_md and "最大变化图斑" in panel_md
    assert "`before.tif` → 后时相 `after.tif`（按上传顺序）" in panel_md and "类别表：synth" in panel_md
    geo = conv.extras["geo"]
    assert [r["name"] for r in geo["rasters"]] == ["before.tif", "after.tif"] and geo["grounded"]

    # English page: same numbers, English labels
    md_en = app.extension.relabel("en", conv, classes, "auto", "synth")[-1]
    assert "Areas per class — after" in md_en and f"| cropland 耕地 | {' | '.join(crop_cells(sc))} |" in md_en


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_follow_ups_retries_plain_images_no_crs_and_order(county, tmp_path):
    from geovl.ui.webapp import Conversation

    sc, f = county
    rec = Recorder()
    app = app_with(rec, tmp_path)
    cls = [str(f["before_classes"]), str(f["after_classes"])]
    _, (_, hist, conv, _, _) = drain(
        app.respond(
            {"text": "How much cropland?", "files": [str(f["before"]), str(f["after"])]},
            [],
            Conversation(),
            "en",
            0.0,
            8,
            cls,
            "upload",
            "synth",
        )
    )
    first = build_grounded(
        f["after"],
        "How much cropland?",
        before_path=f["before"],
        classes=f["after_classes"],
        before_classes=f["before_classes"],
        class_table="synth",
    )
    assert rec.requests[-1].messages == first.messages and rec.requests[-1].images == first.images
    # follow-up without images: grounded again, on the same rasters, with the new question
    _, (_, hist, conv, _, _) = drain(
        app.respond({"text": "And the bare land?", "files": []}, hist, conv, "en", 0.0, 8, cls, "upload", "synth")
    )
    req = rec.requests[-1]
    assert (
        len(req.messages) == 1
        and req.images == first.images
        and req.messages[0]["content"][-1]["text"].endswith("Question: And the bare land?")
    )
    _, (_, hist, conv, _, _) = drain(app.retry(hist, conv, "en", 0.0, 8, cls, "upload", "synth"))
    assert rec.requests[-1].messages == req.messages
    # reversed order: the first upload is the later date; table "auto" for uploads = from the codes only
    _, (_, _, _, md, _) = drain(
        app.respond({"text": "And now?", "files": []}, hist, conv, "en", 0.0, 8, cls, "reversed", "auto")
    )
    assert "before `after.tif` → after `before.tif` (by reversed upload order)" in md
    # a plain PNG keeps the plain path: the whole conversation, the PNG included, goes to engine.stream
    n = len(rec.requests)
    _, (_, hist2, conv2, md2, _) = drain(
        app.respond(
            {"text": "What is this?", "files": [str(f["png"])]}, hist, conv, "en", 0.0, 8, cls, "upload", "auto"
        )
    )
    req = rec.requests[n]
    assert req.messages == conv2.messages[:-1] and len(req.images) == 3 and not conv2.extras["geo"]["grounded"]
    assert t("geo_grounded", "en") not in md2  # the panel no longer claims grounding for this answer

    # a TIFF without a CRS: plain image, and the panel says why
    from geovl.imagery.geotiff import Raster, write_raster

    nocrs = tmp_path / "nocrs.tif"
    with pytest.warns(Warning):
        write_raster(nocrs, Raster((np.random.default_rng(0).random((4, 40, 40)) * 3000).astype("uint16")))
    outs, (_, _, conv3, _, _) = drain(
        app.respond(
            {"text": "Is there water?", "files": [str(nocrs)]}, [], Conversation(), "en", 0.0, 8, None, "auto", "auto"
        )
    )
    assert panel_text(outs) == t("geo_no_crs", "en", names="`nocrs.tif`") and conv3.extras["geo"]["rasters"] == []
    assert rec.requests[-1].messages == [user_turn("Is there water?", 1)]
    # ... and in a conversation that has a measurement, the note stays above it after the (plain) answer
    outs, (_, _, conv3b, md3b, _) = drain(
        app.respond({"text": "Water?", "files": [str(nocrs)]}, hist2, conv2, "en", 0.0, 8, cls, "upload", "auto")
    )
    assert md3b.startswith(t("geo_no_crs", "en", names="`nocrs.tif`") + "\n\n**Images**: before `after.tif`")
    assert (
        "(table: generic)" in md3b and str(f["after"].parent) not in md3b
    )  # no auto-detection beside uploads, no paths
    assert t("geo_grounded", "en") not in md3b and not conv3b.extras["geo"]["grounded"]
    # one class raster for two dates: a clear message in the panel; the answer takes the plain path
    outs, (_, _, conv4, _, _) = drain(
        app.respond(
            {"text": "q", "files": [str(f["before"]), str(f["after"])]},
            [],
            Conversation(),
            "en",
            0.0,
            8,
            [str(f["after_classes"])],
            "auto",
            "auto",
        )
    )
    assert (
        panel_text(outs).startswith("**Measurement failed**: 1 class raster(s) uploaded for 2 date(s)")
        and not conv4.extras["geo"]["grounded"]
    )
    assert rec.requests[-1].messages == [user_turn("q", 2)]
    # no class raster: derived classes, and the panel says so
    _, (_, _, _, md5, _) = drain(
        app.respond({"text": "q", "files": [str(f["after"])]}, [], Conversation(), "zh", 0.0, 8, None, "auto", "auto")
    )
    assert (
        t("geo_classes_derived", "zh") in md5
        and "classes derived from spectral indices" in rec.requests[-1].messages[0]["content"][-1]["text"]
    )


def test_map_button_writes_the_flags_map_and_downloads(county, tmp_path):
    import gradio as gr
    import rasterio

    from geovl.ui.webapp import Conversation

    sc, f = county
    rec = Recorder()
    app = app_with(rec, tmp_path)
    cls = [str(f["before_classes"]), str(f["after_classes"]), str(f["table"])]  # classes.json: the class table
    with pytest.raises(gr.Error, match="GeoTIFF"):
        app.extension.make_map(Conversation(), {"text": "q"}, cls, "auto", "auto", 56, "en")
    _, (_, _, conv, _, _) = drain(
        app.respond(
            {"text": "Are there new buildings?", "files": [str(f["before"]), str(f["after"])]},
            [],
            Conversation(),
            "en",
            0.0,
            8,
            cls,
            "auto",
            "auto",
        )
    )
    n = len(rec.requests)
    md, img, files = app.extension.make_map(conv, {"text": "", "files": []}, cls, "auto", "auto", 56, "en")
    tiles = rec.requests[n:]
    assert len(tiles) == 9 and all(
        r.messages == [user_turn("Are there new buildings?", 1)] for r in tiles
    )  # 3 x 3 tiles of 56 px
    assert "9 tiles (56 px, overlap 14 px): yes 9, no 0" in md and "**9 flagged**" in md and "Areas per class" in md
    names = sorted(Path(x["path"]).name for x in files.value)
    assert names == ["changes.geojson", "flags.geojson", "flags.tif", "measurement.json", "overview.png"]
    by = {Path(x["path"]).name: Path(x["path"]) for x in files.value}
    with rasterio.open(by["flags.tif"]) as ds:
        assert ds.shape == (3, 3) and ds.crs.to_epsg() == 32650 and (ds.read(1) == 1).all()
    assert len(json.loads(by["flags.geojson"].read_text())["features"]) == 9
    doc = json.loads(by["measurement.json"].read_text())
    assert {c["key"]: c["pixels"] for c in doc["dates"]["after"]["classes"]} == sc["after"]["class_pixels"]
    assert Path(img.value["path"]).is_file()


# -- the page in headless Chromium -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geo-ui")
    port = free_port()
    server = Server(
        ["ui", "--model", str(tiny_model_dir(FAMILY)), "--port", str(port), "--max-new-tokens", str(MAX_NEW)],
        tmp / "ui.log",
        port,
    )
    with running(server, path="/"):
        yield {"server": server, "tmp": tmp}


@pytest.fixture(scope="module")
def browser(ui):
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
        "--window-size=1500,1400",
        f"--user-data-dir={ui['tmp'] / 'chrome-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_geotiffs_in_the_browser_panel_grounded_answer_and_map(ui, browser, county, engine):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    sc, f = county
    d = browser
    wait = WebDriverWait(d, 120, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    up = ui["tmp"] / "uploads"
    up.mkdir()
    for k in ("before", "after", "before_classes", "after_classes", "table"):
        shutil.copy(f[k], up / f[k].name)

    def rows(name: str) -> list[list[str]]:
        """Cells of the panel's table rows whose first cell is ``name``."""
        out = []
        for tr in d.find_elements(By.CSS_SELECTOR, "#panel-content table tr"):
            cells = [c.text.strip() for c in tr.find_elements(By.CSS_SELECTOR, "td")]
            if cells and cells[0] == name:
                out.append(cells[1:])
        return out

    def bots() -> list[str]:
        return [e.text for e in d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")]

    d.get(ui["server"].url)
    wait.until(
        lambda _: (
            d.find_elements(By.CSS_SELECTOR, "#geo-map-btn")
            and "测量与地图" in d.find_element(By.CSS_SELECTOR, "#panel-heading").text
        )
    )
    # class maps + classes.json into the panel (before, then after), the two GeoTIFFs into the chat box
    d.find_element(By.CSS_SELECTOR, "#geo-classes input[type='file']").send_keys(
        "\n".join(str(up / f[k].name) for k in ("before_classes", "after_classes", "table"))
    )
    wait.until(
        lambda _: len(d.find_elements(By.CSS_SELECTOR, "#geo-classes .file-preview tr, #geo-classes tbody tr")) >= 3
    )
    d.find_element(By.CSS_SELECTOR, "#msg-input input[type='file']").send_keys(
        f"{up / 'before.tif'}\n{up / 'after.tif'}"
    )
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#msg-input .thumbnails .thumbnail-item")) >= 2)
    q = "耕地面积变化了多少公顷？"
    box = d.find_element(By.CSS_SELECTOR, "#msg-input textarea")
    box.send_keys(q)
    box.send_keys(Keys.ENTER)

    # the panel: exact cropland areas of both dates (synth truth), change tables
    wait.until(lambda _: len(rows("耕地 cropland")) >= 2, "the areas tables never appeared")
    after_row, before_row = rows("耕地 cropland")[:2]
    assert after_row[:4] == crop_cells(sc) and before_row[:4] == crop_cells(sc, "before")
    share = sc["after"]["class_pixels"]["cropland"] / (112 * 112)
    assert after_row[4] == fmt(share, "share")
    panel = d.find_element(By.CSS_SELECTOR, "#panel-content").text
    assert (
        "变化矩阵" in panel
        and norm("类别表：synth") in norm(panel)
        and norm("前时相 before.tif → 后时相 after.tif") in norm(panel)
    )

    # the chat answer is the grounded answer (measured figures in the prompt)
    want = grounded_answer(
        engine,
        f["after"],
        q,
        before_path=f["before"],
        classes=f["after_classes"],
        before_classes=f["before_classes"],
        class_table="synth",
        params=GenerationParams(max_new_tokens=MAX_NEW),
    )
    images = [image_for_model(f["before"])[0], image_for_model(f["after"])[0]]
    plain = engine.generate([ChatRequest([user_turn(q, 2)], images)], GenerationParams(max_new_tokens=MAX_NEW))[0]
    assert norm(want.answer) != norm(plain), "the grounded prompt changes the answer"
    wait.until(lambda _: bots() and norm(bots()[-1]) == norm(want.answer), f"answer never became {want.answer!r}")
    wait.until(
        lambda _: (
            t("geo_grounded", "zh").split("：")[0].strip("*") in d.find_element(By.CSS_SELECTOR, "#panel-content").text
        )
    )
    assert d.find_elements(By.CSS_SELECTOR, "#panel-map img")

    # the map button: flags map over the later image, preview and downloads
    d.find_element(By.CSS_SELECTOR, "#geo-map-btn").click()
    wait.until(
        lambda _: "疑似问题图" in d.find_element(By.CSS_SELECTOR, "#panel-content").text,
        "the map summary never appeared",
    )
    wait.until(lambda _: len(d.find_elements(By.CSS_SELECTOR, "#geo-files a, #geo-files tbody tr")) >= 5)
    panel = d.find_element(By.CSS_SELECTOR, "#panel-content").text
    assert "共 1 个图块（224 像素" in panel
    img = d.find_element(By.CSS_SELECTOR, "#panel-map img")
    assert img.get_attribute("src") and d.execute_script("return arguments[0].naturalWidth", img) == 768

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "geo_webapp.png"
    d.set_window_size(1500, 3300)  # the whole panel: tables, map, controls
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
