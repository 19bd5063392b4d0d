"""API limits and image-reference security.

In-process (FastAPI TestClient) for speed: path escapes (`..`, absolute paths, `file://` outside the
allowed folder, symlinked files and folders), http URLs when not allowed (and size limits when
allowed, against a local HTTP server), a decompression-bomb PNG (20000×20000, 1-bit, a few KB on
disk: refused from its header, never decoded), malformed base64, non-image and truncated bytes,
too many images, oversized max_tokens / images / bodies, malformed JSON and schemas — each a 4xx
in the OpenAI error shape with a clear message. A Python audit hook records every file the process
opens, proving no file outside the allowed folder is ever opened (we run as root, so a mode-000
canary file would prove nothing). Then the same against a real `geovl serve` subprocess whose
audit hook logs every opened path to a file.
"""

from __future__ import annotations

import http.server
import os
import struct
import sys
import threading
import zlib
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from geovl.serve import LocalEngine
from geovl.serve.api import ServerConfig, create_app
from geovl.serve.images import ImageLimits
from serve_util import Server, data_uri, free_port, png, running

FAMILY = "qwen2-vl"
MAX_IMAGE_BYTES = 200_000

# -- an audit hook that records opened paths while armed ---------------------------------------------
OPENED: list[str] = []
_ARMED = threading.Event()


def _audit(event, args):
    if event == "open" and _ARMED.is_set() and args and not isinstance(args[0], int):
        try:
            OPENED.append(os.path.abspath(os.fsdecode(args[0])))
        except (TypeError, ValueError):
            pass


sys.addaudithook(_audit)


def bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A valid 1-bit grayscale PNG of w×h zero pixels: ~50 MB of rows, a few KB compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """allowed/{ok.png, sub/inner.png, link.png → outside, linkdir → outside/}; outside/secret.png."""
    root = tmp_path_factory.mktemp("sec")
    allowed, outside = root / "allowed", root / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "ok.png").write_bytes(png(1))
    (allowed / "sub" / "inner.png").write_bytes(png(2))
    (outside / "secret.png").write_bytes(png(3))  # a valid image: opening it would make the request succeed
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "linkdir").symlink_to(outside, target_is_directory=True)
    (allowed / "bomb.png").write_bytes(bomb_png())
    return {"root": root, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = LocalEngine(str(tiny_model_dir(FAMILY)))
    yield e
    e.close()


def make_client(engine, tree, **limits):
    kw = dict(max_image_bytes=MAX_IMAGE_BYTES, max_pixels=4_000_000, max_images=3, allowed_dir=str(tree["allowed"]))
    kw.update(limits)
    app = create_app(engine, ServerConfig(served_model_name="tiny", limits=ImageLimits(**kw), max_tokens_limit=64, default_max_tokens=6))
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(engine, tree):
    with make_client(engine, tree) as c:
        yield c


def ask(client, urls, text="What is here?", **extra):
    content = [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": text}]
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra})


def error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and len(err["message"]) > 15 and err["type"]
    return err["message"]


def outside_opened(tree) -> list[str]:
    out = str(tree["outside"].resolve())
    return [p for p in OPENED if os.path.realpath(p).startswith(out) or p.startswith(str(tree["outside"]))]


def test_path_escapes_are_refused_and_nothing_outside_is_opened(client, tree, engine):
    allowed, outside = tree["allowed"], tree["outside"]
    secret = outside / "secret.png"
    cases = [
        "../outside/secret.png",
        "sub/../../outside/secret.png",
        "sub/../ok.png",  # '..' is refused even when it would stay inside
        str(secret),
        f"file://{secret}",
        f"file://{allowed}/../outside/secret.png",
        f"file://localhost{secret}",
        f"file://evil.example.com{allowed}/ok.png",
        "link.png",  # symlink to a file outside
        "linkdir/secret.png",  # symlinked folder leading outside
        f"{allowed}/linkdir/secret.png",
        "/etc/passwd",
        "~/secret.png",
    ]
    OPENED.clear()
    _ARMED.set()
    try:
        for ref in cases:
            msg = error(ask(client, [ref]), 403, "path_not_allowed")
            assert "image 1" in msg and ("outside" in msg or ".." in msg or "host" in msg or "~" in msg), (ref, msg)
        good = ask(client, ["sub/inner.png"])
        absolute = ask(client, [f"file://{allowed}/ok.png"])
        missing = ask(client, ["nope.png"])
    finally:
        _ARMED.clear()
    assert outside_opened(tree) == [], "a file outside the allowed folder was opened"
    assert str(allowed / "sub" / "inner.png") in OPENED and str(allowed / "ok.png") in OPENED  # the spy works
    assert good.status_code == 200 and absolute.status_code == 200
    error(missing, 404, "image_not_found")
    # a local path gives exactly the answer of the same bytes sent as a data URI
    via_uri = ask(client, [data_uri(png(1))])
    assert absolute.json()["choices"][0]["message"]["content"] == via_uri.json()["choices"][0]["message"]["content"]


def test_local_paths_and_http_are_off_unless_enabled(engine, tree):
    with make_client(engine, tree, allowed_dir=None) as c:
        msg = error(ask(c, ["ok.png"]), 400, "local_images_disabled")
        assert "--allowed-image-dir" in msg
        error(ask(c, [f"file://{tree['allowed']}/ok.png"]), 400, "local_images_disabled")
        msg = error(ask(c, ["http://127.0.0.1:9/x.png"]), 400, "http_images_disabled")
        assert "--allow-http-images" in msg
        error(ask(c, ["ftp://example.com/x.png"]), 400, "invalid_image_url")


class _Images(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_http_images_when_allowed_are_size_limited(engine, tree):
    _Images.files = {"/ok.png": png(1), "/big.png": png(9, 400, 400), "/bomb.png": bomb_png(), "/text": b"hello" * 100}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert len(_Images.files["/big.png"]) > MAX_IMAGE_BYTES
        with make_client(engine, tree, allow_http=True) as c:
            ok = ask(c, [base + "/ok.png"])
            assert ok.status_code == 200
            assert ok.json()["choices"][0]["message"]["content"] == ask(c, [data_uri(png(1))]).json()["choices"][0]["message"]["content"]
            error(ask(c, [base + "/big.png"]), 413, "image_too_large")
            error(ask(c, [base + "/bomb.png"]), 413, "image_too_many_pixels")
            error(ask(c, [base + "/text"]), 400, "invalid_image")
            error(ask(c, [base + "/missing.png"]), 400, "image_fetch_failed")
    finally:
        srv.shutdown()


def test_decompression_bomb_is_refused_from_its_header(client, tree, monkeypatch):
    from PIL import ImageFile

    bomb = (tree["allowed"] / "bomb.png").read_bytes()
    assert len(bomb) < 100_000  # tiny on disk, 400 million pixels
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    for ref in ("bomb.png", data_uri(bomb)):
        msg = error(ask(client, [ref]), 413, "image_too_many_pixels")
        assert "20000x20000" in msg and "before decoding" in msg
    assert (20000, 20000) not in decoded, "the bomb was decoded"
    assert ask(client, [data_uri(png(4))]).status_code == 200
    assert (112, 84) in decoded  # the spy sees real decodes


def test_bad_image_data(client):
    import base64

    cases = [
        ("data:image/png;base64,iVBORw0KGgo%%%%", 400, "invalid_base64"),
        ("data:image/png;base64,abc", 400, "invalid_base64"),
        ("data:image/png,rawbytes", 400, "invalid_data_uri"),
        ("data:;base64", 400, "invalid_data_uri"),
        (data_uri(b"this is not an image at all, just text"), 400, "invalid_image"),
        (data_uri(png(5)[:200]), 400, "invalid_image"),  # truncated PNG
        (data_uri(b""), 400, "invalid_image"),
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES + 10)).decode(), 413, "image_too_large"),
        ("   ", 422, "invalid_schema"),
    ]
    for url, status, code in cases:
        error(ask(client, [url]), status, code)


def test_request_limits(client, monkeypatch):
    import geovl.serve.api as api

    fetched = []
    real = api.fetch_image
    monkeypatch.setattr(api, "fetch_image", lambda *a: fetched.append(a[0]) or real(*a))
    msg = error(ask(client, [data_uri(png(i)) for i in range(4)]), 400, "too_many_images")
    assert "4 images" in msg and "3" in msg
    assert fetched == [], "no image is read when there are too many"
    # the limit counts images of all turns
    turns = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png(i))}} for i in range(2)] + [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png(i))}} for i in range(2)]},
    ]
    error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": turns}), 400, "too_many_images")
    msg = error(ask(client, [], max_tokens=65), 400, "max_tokens_too_large")
    assert "64" in msg
    error(ask(client, [], max_completion_tokens=1000), 400, "max_tokens_too_large")
    assert ask(client, [], max_tokens=64).status_code == 200
    limit = client.app.state.config.max_body_bytes()
    r = client.post("/v1/chat/completions", content=b" " * (limit + 1), headers={"content-type": "application/json"})
    error(r, 413, "request_too_large")


def test_malformed_requests(client):
    def post(body, raw=False):
        return client.post("/v1/chat/completions", content=body if raw else None, json=None if raw else body, headers={"content-type": "application/json"})

    error(post(b"{not json", raw=True), 400, "invalid_json")
    error(post(b"\xff\xfe", raw=True), 400, "invalid_json")
    error(post([1, 2]), 422, "invalid_schema")
    assert "messages" in error(post({"model": "tiny"}), 422, "invalid_schema")
    assert "temperature" in error(post({"messages": [{"role": "user", "content": "x"}], "temperature": 5}), 422, "invalid_schema")
    assert "top_p" in error(post({"messages": [{"role": "user", "content": "x"}], "top_p": 0}), 422, "invalid_schema")
    error(post({"messages": [{"role": "tool", "content": "x"}]}), 400, "invalid_role")
    error(post({"messages": [{"role": "system", "content": "x"}]}), 400, "invalid_messages")
    msg = error(post({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]}), 400, "invalid_content")
    assert "video_url" in msg
    msg = error(post({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_uri(png(1))}}]}, {"role": "user", "content": "x"}]}), 400, "invalid_content")
    assert "assistant" in msg
    error(post({"messages": [{"role": "user", "content": "x"}], "n": 2}), 400, "unsupported_parameter")
    error(post({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}), 404, "model_not_found")
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


AUDITED = """
import os, sys
log = open(sys.argv[1], "a", buffering=1)
def hook(event, args):
    if event == "open" and args and not isinstance(args[0], int):
        try:
            log.write(os.path.abspath(os.fsdecode(args[0])) + "\\n")
        except Exception:
            pass
sys.addaudithook(hook)
from geovl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_real_server_refuses_escapes_and_never_opens_outside_files(tiny_model_dir, tree, tmp_path):
    port = free_port()
    audit = tmp_path / "opened.txt"
    argv = [str(audit), "serve", "--model", str(tiny_model_dir(FAMILY)), "--port", str(port), "--served-model-name", "tiny",
            "--allowed-image-dir", str(tree["allowed"]), "--max-images", "2", "--max-pixels", "1000000", "--log-level", "warning"]
    server = Server(argv, tmp_path / "server.log", port, prefix=[sys.executable, "-c", AUDITED])
    with running(server):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)

        def create(url):
            return c.chat.completions.create(model="tiny", max_tokens=6, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is here?"}]}])

        for ref in ("../outside/secret.png", str(tree["outside"] / "secret.png"), f"file://{tree['outside']}/secret.png", "link.png", "linkdir/secret.png"):
            with pytest.raises(openai.PermissionDeniedError) as e:
                create(ref)
            assert e.value.status_code == 403 and e.value.body["code"] == "path_not_allowed"
        with pytest.raises(openai.APIStatusError) as e:
            create("bomb.png")
        assert e.value.status_code == 413 and "20000x20000" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ok.png"}}] * 3}])
        assert e.value.body["code"] == "too_many_images"
        inside = create("sub/inner.png").choices[0].message.content
        assert inside == create(data_uri(png(2))).choices[0].message.content
        assert httpx.get(server.url + "/health").status_code == 200
    opened = audit.read_text().splitlines()
    assert str(tree["allowed"] / "sub" / "inner.png") in opened  # the audit log sees the server's opens
    assert outside_opened_from(opened, tree) == []


def outside_opened_from(paths: list[str], tree) -> list[str]:
    out = str(tree["outside"].resolve())
    return [p for p in paths if os.path.realpath(p).startswith(out) or p.startswith(str(tree["outside"]))]


def test_engine_stats_unchanged_by_refused_requests(client, engine):
    """Refused requests never reach the engine."""
    before = engine.stats.samples
    ask(client, ["../outside/secret.png"])
    ask(client, [data_uri(b"junk")])
    assert engine.stats.samples == before
    assert ask(client, [], max_tokens=2).status_code == 200
    assert engine.stats.samples == before + 1
