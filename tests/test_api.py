"""`geovl serve` as a real subprocess, driven with the official `openai` client over HTTP.

Answers must equal `LocalEngine.generate` for the same conversation (greedy; the API does not alter
the prompt): plain and streamed, images as data URIs, multi-turn with images in earlier turns,
system messages, seeded sampling, concurrent requests (micro-batched); `/v1/models`, `/health`;
API key on (right key works, wrong or missing → 401) and off; usage counts equal the real prompt
and answer token counts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from geovl.data.schema import assistant_turn, text_part, user_turn
from geovl.inference import ChatRequest, GenerationParams, LocalEngine
from geovl.inference.remote import RemoteEngine
from serve_util import Server, data_uri, free_port, jpeg, png, running

FAMILY = "qwen2.5-vl"
KEY = "s3cret-key"
MAX = 8


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    model = str(tiny_model_dir(FAMILY))
    tmp = tmp_path_factory.mktemp("api")
    common = ["serve", "--model", model, "--served-model-name", "tiny", "--log-level", "warning"]
    keyed = Server(common + ["--port", str(p := free_port()), "--api-key", KEY], tmp / "keyed.log", p)
    open_ = Server(common + ["--port", str(q := free_port())], tmp / "open.log", q)
    with running(keyed, open_):
        engine = LocalEngine(model)  # loads while nothing else happens; servers are up
        yield {"keyed": keyed, "open": open_, "engine": engine}
        engine.close()


def client(server: Server, key: str | None = "EMPTY") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def local(engine, req: ChatRequest, **kw) -> tuple[str, dict]:
    usage: list = []
    text = engine.generate([req], GenerationParams(max_new_tokens=kw.pop("max_new_tokens", MAX), **kw), usage=usage)[0]
    return text, usage[0]


def test_plain_and_streamed_completion_with_an_image_equal_the_local_engine(setup):
    img = png(1)
    req = ChatRequest([user_turn("Is there water in the scene?", 1)], [img])
    want, want_usage = local(setup["engine"], req)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(img)}},
                {"type": "text", "text": "Is there water in the scene?"},
            ],
        }
    ]
    c = client(setup["open"])

    resp = c.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX)
    assert resp.choices[0].message.content == want
    assert resp.choices[0].message.role == "assistant"
    assert resp.model == "tiny" and resp.object == "chat.completion"
    # usage: the real prompt length (after image-pad expansion) and answer length
    n_prompt = int(setup["engine"].encode([req])["input_ids"].shape[1])
    assert resp.usage.prompt_tokens == want_usage["prompt_tokens"] == n_prompt
    assert resp.usage.completion_tokens == want_usage["completion_tokens"]
    assert resp.usage.total_tokens == n_prompt + want_usage["completion_tokens"]
    assert resp.choices[0].finish_reason == want_usage["finish_reason"]

    chunks = list(
        c.chat.completions.create(
            model="tiny", messages=messages, max_tokens=MAX, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(deltas) == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for d in deltas if d) >= 2, "the answer arrives in several pieces"
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [want_usage["finish_reason"]]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == want_usage["completion_tokens"]
    assert len({ch.id for ch in chunks}) == 1


def test_raw_sse_ends_with_done(setup):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Describe the county."}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", setup["open"].url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


def test_multi_turn_with_images_in_earlier_turns_and_a_system_message(setup):
    a, b, c_img = png(2, 168, 56), jpeg(3), png(4, 56, 56)
    geo = [
        {"role": "system", "content": [text_part("You are a remote-sensing expert.")]},
        user_turn("Compare the two images: what changed?", 2),
        assistant_turn("a new road"),
        {
            "role": "user",
            "content": [text_part("And in this one? "), {"type": "image"}, text_part(" Is it the same area?")],
        },
    ]
    req = ChatRequest(geo, [a, b, c_img])
    want, _ = local(setup["engine"], req)
    messages = [
        {"role": "system", "content": "You are a remote-sensing expert."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(a)}},
                {"type": "image_url", "image_url": {"url": data_uri(b, "image/jpeg")}},
                {"type": "text", "text": "Compare the two images: what changed?"},
            ],
        },
        {"role": "assistant", "content": "a new road"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And in this one? "},
                {"type": "image_url", "image_url": {"url": data_uri(c_img)}},
                {"type": "text", "text": " Is it the same area?"},
            ],
        },
    ]
    got = (
        client(setup["open"])
        .chat.completions.create(model="tiny", messages=messages, max_tokens=MAX)
        .choices[0]
        .message.content
    )
    assert got == want
    # the earlier images matter: without them the answer is different
    text_only = ChatRequest(
        [
            geo[0],
            user_turn("Compare the two images: what changed?"),
            geo[2],
            user_turn("And in this one?  Is it the same area?"),
        ],
        [],
    )
    assert local(setup["engine"], text_only)[0] != want
    # RemoteEngine (used by `geovl eval --api`) over the same server gives the local answers too
    remote = RemoteEngine(setup["open"].url, concurrency=3)
    reqs = [
        req,
        ChatRequest([user_turn("有没有水体？", 1)], [png(5)]),
        ChatRequest([user_turn("What is remote sensing?")], []),
    ]
    assert remote.generate(reqs, GenerationParams(max_new_tokens=MAX)) == setup["engine"].generate(
        reqs, GenerationParams(max_new_tokens=MAX)
    )
    assert "".join(remote.stream(req, GenerationParams(max_new_tokens=MAX))) == want
    remote.close()


def test_concurrent_requests_are_answered_as_one_by_one(setup):
    reqs = [
        ChatRequest([user_turn(f"Question {i}: is there a road?", 1)], [png(10 + i, 56 + 14 * i, 84)]) for i in range(6)
    ]
    want = [local(setup["engine"], r)[0] for r in reqs]
    c = client(setup["open"])

    def ask(i):
        msg = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_uri(reqs[i].images[0])}},
                    {"type": "text", "text": f"Question {i}: is there a road?"},
                ],
            }
        ]
        return c.chat.completions.create(model="tiny", messages=msg, max_tokens=MAX).choices[0].message.content

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, range(6)))
    assert got == want


def test_seeded_sampling_is_reproducible_and_matches_local(setup):
    req = ChatRequest([user_turn("Describe this scene.", 1)], [png(7)])
    want, _ = local(setup["engine"], req, temperature=0.9, top_p=0.95, seed=123, max_new_tokens=12)
    msg = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(png(7))}},
                {"type": "text", "text": "Describe this scene."},
            ],
        }
    ]
    c = client(setup["open"])
    got = [
        c.chat.completions.create(model="tiny", messages=msg, max_tokens=12, temperature=0.9, top_p=0.95, seed=123)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert got == [want, want]
    greedy, _ = local(setup["engine"], req, max_new_tokens=12)
    assert want != greedy, "sampling at temperature 0.9 differs from greedy with this seed"


def test_models_health_and_api_key(setup):
    keyed, open_ = setup["keyed"], setup["open"]
    assert [m.id for m in client(keyed, KEY).models.list()] == ["tiny"]
    assert [m.id for m in client(open_).models.list()] == ["tiny"]
    health = httpx.get(keyed.url + "/health").json()  # open for probes
    assert (health["status"], health["model"]) == ("ok", "tiny") and health["engine_calls"] <= health[
        "batched_requests"
    ]

    msg = [{"role": "user", "content": "Is the area rural or urban?"}]
    right = (
        client(keyed, KEY)
        .chat.completions.create(model="tiny", messages=msg, max_tokens=MAX)
        .choices[0]
        .message.content
    )
    assert right == local(setup["engine"], ChatRequest([user_turn("Is the area rural or urban?")], []))[0]
    with pytest.raises(openai.AuthenticationError) as e:
        client(keyed, "wrong-key").chat.completions.create(model="tiny", messages=msg, max_tokens=MAX)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed, "wrong-key").models.list()
    for headers in ({}, {"Authorization": "Basic " + KEY}, {"Authorization": "Bearer"}):
        r = httpx.post(keyed.url + "/v1/chat/completions", json={"model": "tiny", "messages": msg}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "missing_api_key" and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    # key off: any or no key works
    r = httpx.post(open_.url + "/v1/chat/completions", json={"model": "tiny", "messages": msg, "max_tokens": MAX})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == right


def test_errors_over_http_use_the_openai_shape(setup):
    c = client(setup["open"])
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="other-model", messages=[{"role": "user", "content": "hi"}])
    assert "tiny" in e.value.body["message"] and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    assert e.value.body["code"] == "max_tokens_too_large" and "2048" in e.value.body["message"]
    r = httpx.post(
        setup["open"].url + "/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_cli_user_errors(tiny_model_dir, tmp_path, capsys):
    from geovl.cli import main

    model = str(tiny_model_dir(FAMILY))
    capsys.readouterr()
    cases = [
        (["serve", "--model", model, "--load-in-4bit"], "CUDA"),
        (["serve", "--model", model, "--attn-implementation", "flash_attention_2"], "flash_attention_2"),
        (["serve", "--model", model, "--allowed-image-dir", str(tmp_path / "missing")], "does not exist"),
        (["serve", "--model", model, "--max-images", "0"], "--max-images"),
        (["serve", "--model", str(tmp_path / "no-model")], "no-model"),
        (["ui"], "--model"),
        (["ui", "--model", model, "--api", "http://127.0.0.1:9/v1"], "either"),
        (["ui", "--api", "http://127.0.0.1:9/v1", "--adapter", model], "--adapter"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "geovl: error:" in err and needle in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "ui" in out


def test_jpeg2000_upload_answers_like_the_geotiff(setup, tmp_path):
    """A 4-band uint16 JPEG2000 (Sentinel-2's format) sent as a data URI goes through the one render path:
    the same answer as the local engine given the GeoTIFF of the same data. Before: 'unsupported format'."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.Env() as env:
        if "JP2OpenJPEG" not in env.drivers():
            pytest.skip("this rasterio build has no JP2OpenJPEG driver")
    rng = np.random.default_rng(4)
    data = (rng.integers(200, 4000, (4, 48, 64))).astype(np.uint16)
    raw = {}
    for name, kw in (
        ("tif", {"driver": "GTiff"}),
        ("jp2", {"driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES"}),
    ):
        path = tmp_path / f"a.{name}"
        with rasterio.open(
            path,
            "w",
            width=64,
            height=48,
            count=4,
            dtype="uint16",
            crs="EPSG:32650",
            transform=from_origin(440000, 4065000, 10, 10),
            **kw,
        ) as dst:
            dst.write(data)
        raw[name] = path.read_bytes()
    q = "Is there water in the scene?"
    want, _ = local(setup["engine"], ChatRequest([user_turn(q, 1)], [raw["tif"]]))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(raw["jp2"], "image/jp2")}},
                {"type": "text", "text": q},
            ],
        }
    ]
    resp = client(setup["open"]).chat.completions.create(model="tiny", messages=messages, max_tokens=MAX)
    assert resp.choices[0].message.content == want
