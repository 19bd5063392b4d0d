"""Videos through the OpenAI-compatible API: a real `geovl serve` subprocess driven with the official
`openai` client.

- A ``video_url`` part (a ``data:video/mp4`` URI, or a path / ``file://`` URL inside
  ``--allowed-image-dir``) is answered exactly as :class:`LocalEngine` answers the same conversation with
  the same video (greedy; the server samples the frames with the model folder's video settings, as the
  engine does): plain and streamed, usage = the real prompt length after video-pad expansion.
- Bad videos are 4xx in the OpenAI error shape with a stable code and a message naming the problem:
  truncated, an image sent as a video, audio only, zero frames, a 10-hour declared duration, a 3 KB
  file declaring 15000×15000 frames (refused from its header), over the byte limit, too many videos,
  a path outside the allowed folder, an http URL while remote fetches are off.
- Nothing is left in the server's temporary folder (``TMPDIR``), and a client that drops a streamed
  video answer stops its generation (a handful of tokens, not the 1,500 asked for).
"""

from __future__ import annotations

import base64
import os
import threading

import httpx
import numpy as np
import openai
import pytest

from geovl.imagery.video import encode_mp4
from geovl.inference import ChatRequest, GenerationParams, LocalEngine
from geovl.serve.openai_format import APIError
from serve_util import Server, free_port, png
from video_util import audio_only_mp4, mp4_declaring, ten_hour_mp4, zero_frame_avi

FAMILY = "qwen2.5-vl"
MAX = 8
MAX_VIDEO_BYTES = 1_000_000


def clip(seed: int = 0, n: int = 6, w: int = 64, h: int = 48, fps: float = 2.0) -> bytes:
    """A small H.264 MP4: a bright square moving over a noisy field (n frames)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        x = (i * 7) % (w - 12)
        f[10:22, x : x + 12] = 250
        frames.append(f)
    return encode_mp4(frames, fps=fps)


def video_uri(b: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(b).decode()


def video_messages(url: str, text: str = "What changes in this drone video?", n: int = 1) -> list[dict]:
    parts = [{"type": "video_url", "video_url": {"url": url}} for _ in range(n)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def video_turn(text: str) -> dict:
    return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    model = str(tiny_model_dir(FAMILY))
    tmp = tmp_path_factory.mktemp("api-video")
    allowed, outside, server_tmp = tmp / "allowed", tmp / "outside", tmp / "server-tmp"
    for d in (allowed, outside, server_tmp):
        d.mkdir()
    (allowed / "flight.mp4").write_bytes(clip(1))
    (outside / "secret.mp4").write_bytes(clip(2))
    port = free_port()
    argv = ["serve", "--model", model, "--port", str(port), "--served-model-name", "tiny", "--log-level", "warning"]
    argv += [
        "--allowed-image-dir",
        str(allowed),
        "--max-video-bytes",
        str(MAX_VIDEO_BYTES),
        "--max-tokens-limit",
        "2000",
    ]
    server = Server(argv, tmp / "server.log", port)
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(server_tmp)  # the server process's temporary folder (server_env copies os.environ)
    try:
        server.start()
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
    try:
        server.wait()
        engine = LocalEngine(model)
        yield {"server": server, "engine": engine, "allowed": allowed, "outside": outside, "tmp": server_tmp}
        engine.close()
    finally:
        server.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)


def local(engine, req: ChatRequest, max_new_tokens: int = MAX) -> tuple[str, dict]:
    usage: list = []
    text = engine.generate([req], GenerationParams(max_new_tokens=max_new_tokens), usage=usage)[0]
    return text, usage[0]


def test_video_data_uri_plain_and_streamed_equal_the_local_engine(setup):
    video = clip(0)
    q = "这段无人机视频里出现了什么新建筑？"
    want, want_usage = local(setup["engine"], ChatRequest([video_turn(q)], [], [video]))
    c = client(setup["server"])

    resp = c.chat.completions.create(model="tiny", messages=video_messages(video_uri(video), q), max_tokens=MAX)
    assert resp.choices[0].message.content == want
    n_prompt = int(setup["engine"].encode([ChatRequest([video_turn(q)], [], [video])])["input_ids"].shape[1])
    assert resp.usage.prompt_tokens == want_usage["prompt_tokens"] == n_prompt
    assert n_prompt > 20, "the video's tokens are in the prompt"
    assert resp.usage.completion_tokens == want_usage["completion_tokens"]

    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=video_messages(video_uri(video), q),
            max_tokens=MAX,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(deltas) == want and sum(1 for d in deltas if d) >= 2, "streamed in several pieces"
    assert chunks[-1].usage.prompt_tokens == n_prompt

    # a different video gives a different prompt to the model: the frames really reach it
    other, _ = local(setup["engine"], ChatRequest([video_turn(q)], [], [clip(5, w=96, h=64)]))
    resp2 = c.chat.completions.create(
        model="tiny", messages=video_messages(video_uri(clip(5, w=96, h=64)), q), max_tokens=MAX
    )
    assert resp2.choices[0].message.content == other
    assert resp2.usage.prompt_tokens > n_prompt  # larger frames, more video tokens


def test_video_with_an_image_and_history_and_local_paths(setup):
    c, engine = client(setup["server"]), setup["engine"]
    video, img = (setup["allowed"] / "flight.mp4").read_bytes(), png(7)
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(img).decode()}},
                {"type": "text", "text": "Before:"},
            ],
        },
        {"role": "assistant", "content": "farmland"},
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": "flight.mp4"}},
                {"type": "text", "text": "And now, in the flight video?"},
            ],
        },
    ]
    geo = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Before:"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "farmland"}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And now, in the flight video?"}]},
    ]
    want, _ = local(engine, ChatRequest(geo, [img], [video]))
    assert c.chat.completions.create(model="tiny", messages=msgs, max_tokens=MAX).choices[0].message.content == want
    url = "file://" + str(setup["allowed"] / "flight.mp4")
    r = c.chat.completions.create(model="tiny", messages=video_messages(url, "What is here?"), max_tokens=MAX)
    assert r.choices[0].message.content == local(engine, ChatRequest([video_turn("What is here?")], [], [video]))[0]


def refused(c, url: str, status: int, code: str, n: int = 1) -> str:
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="tiny", messages=video_messages(url, n=n), max_tokens=MAX)
    assert e.value.status_code == status, e.value.body
    body = e.value.body
    assert body["code"] == code, body
    assert body["type"] == APIError.TYPES[status] and body["param"] == "messages"
    assert len(body["message"]) > 20 and " / " in body["message"], "a clear, bilingual message"
    return body["message"]


def test_bad_videos_are_4xx_with_clear_messages_and_leave_no_temp_files(setup):
    c = client(setup["server"])
    good = clip(3)
    msg = refused(c, video_uri(good[: len(good) // 2]), 400, "video_corrupt")
    assert "truncated" in msg
    assert "PNG image" in refused(c, video_uri(png(1)), 400, "not_a_video")
    assert "audio" in refused(c, video_uri(audio_only_mp4(), "audio/mp4"), 400, "no_video_stream")
    refused(c, video_uri(zero_frame_avi(), "video/x-msvideo"), 400, "video_zero_frames")
    msg = refused(c, video_uri(ten_hour_mp4()), 400, "video_too_long")
    assert "36001 s" in msg and "--max-video-seconds" in msg
    msg = refused(c, video_uri(mp4_declaring()), 413, "video_too_large")
    assert "15000×15000" in msg and "--max-video-frame-pixels" in msg
    big = np.random.default_rng(0).integers(0, 255, MAX_VIDEO_BYTES + 10, dtype=np.uint8).tobytes()
    assert str(MAX_VIDEO_BYTES) in refused(c, video_uri(big), 413, "video_too_many_bytes")
    assert "3 videos" in refused(c, video_uri(good), 400, "too_many_videos", n=3)
    refused(c, "../outside/secret.mp4", 403, "path_not_allowed")
    refused(c, "file://" + str(setup["outside"] / "secret.mp4"), 403, "path_not_allowed")
    refused(c, "missing.mp4", 404, "video_not_found")
    assert "--allow-http-images" in refused(c, "https://example.com/flight.mp4", 400, "http_videos_disabled")
    with pytest.raises(openai.UnprocessableEntityError):
        c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]
        )
    # the server is fine and left nothing in its temporary folder
    assert c.chat.completions.create(model="tiny", messages=video_messages(video_uri(good)), max_tokens=2).choices
    assert sorted(os.listdir(setup["tmp"])) == []


def _health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def _until(pred, what: str, tries: int = 1200):
    for _ in range(tries):
        if pred():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def test_dropped_video_stream_stops_generating(setup):
    server, c = setup["server"], client(setup["server"])
    before = _health(server)["generated_tokens"]
    s = c.chat.completions.create(
        model="tiny", messages=video_messages(video_uri(clip(4))), max_tokens=1500, temperature=0, stream=True
    )
    for ch in s:
        if ch.choices and ch.choices[0].delta.content:
            break
    s.close()
    _until(lambda: (h := _health(server))["running"] == 0 and h["queued"] == 0, "the dropped stream stopped")
    generated = _health(server)["generated_tokens"] - before
    assert generated < 500, f"{generated} tokens generated for a dropped stream (1,500 asked)"
    r = c.chat.completions.create(model="tiny", messages=video_messages(video_uri(clip(4))), max_tokens=MAX)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_grounded_extension_refuses_videos_and_the_web_app_asks_through_the_api(setup, tmp_path):
    """The geovl grounded extension reads GeoTIFFs, not videos (a clear 400); `geovl ui --api` (the web app on
    a RemoteEngine) sends an uploaded video as a video_url part and streams the server's answer, which is
    the local engine's answer for the same video."""
    from geovl.inference.remote import RemoteEngine
    from geovl.ui.webapp import ChatApp, Conversation

    c, video = client(setup["server"]), clip(6)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model="tiny",
            messages=video_messages(video_uri(video)),
            max_tokens=MAX,
            extra_body={"geovl": {"grounded": True}},
        )
    assert e.value.body["code"] == "unsupported_content" and "video" in e.value.body["message"]

    remote = RemoteEngine(setup["server"].url + "/v1", api_key="EMPTY", model="tiny")
    try:
        app = ChatApp(remote, max_new_tokens=MAX)
        (path := tmp_path / "site.mp4").write_bytes(video)
        q = "Is there a new building?"
        outs = list(app.respond({"text": q, "files": [str(path)]}, [], Conversation(), "en", 0, MAX))
        _, history, conv, _, _ = outs[-1]
    finally:
        remote.close()
    assert conv.videos == [video]
    assert history[-1]["content"] == local(setup["engine"], ChatRequest([video_turn(q)], [], [video]))[0]


def test_request_settings_keep_the_model_sampling_under_the_server_limits():
    from geovl.imagery.video import VideoSettings
    from geovl.serve.videos import SERVER_VIDEO_LIMITS, request_settings, video_code

    model = VideoSettings(fps=4.0, max_frames=32, max_duration_s=7200.0, max_pixels=50176)
    server = VideoSettings(max_frames=8, max_duration_s=60.0, max_bytes=1000, max_frame_pixels=640 * 480)
    s = request_settings(model, server)
    assert (s.fps, s.max_pixels) == (4.0, 50176)  # sampled as the model was trained
    assert (s.max_frames, s.max_duration_s, s.max_bytes, s.max_frame_pixels) == (8, 60.0, 1000, 640 * 480)
    assert request_settings(VideoSettings(max_frames=4), server).max_frames == 4  # the cap never raises it
    # a folder without a frame-size bound: frames resized to the server's bound (memory), defaults otherwise
    d = request_settings(None)
    assert d.max_pixels == SERVER_VIDEO_LIMITS.max_pixels == 1280 * 720 and d.fps == VideoSettings().fps
    assert [video_code(r) for r in ("corrupt", "not_a_video", "no_video_stream", "unsupported_codec")] == [
        "video_corrupt",
        "not_a_video",
        "no_video_stream",
        "video_unsupported_codec",
    ]
