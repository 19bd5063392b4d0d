"""RemoteEngine against a local OpenAI-compatible stub server (exact payloads, SSE streaming), the
eval driver (prompt/reference split, records, order, resume, rejects) and the `geovl eval` /
`geovl infer` commands."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.schema import assistant_turn, make_sample, text_part, user_turn
from geovl.inference import ChatRequest, EngineError, GenerationParams

# -- a minimal OpenAI-compatible server ----------------------------------------------------------
ANSWERS = {"Is there water?": "yes", "有水吗？": "有"}


def stub_answer(body: dict) -> str:
    user = [m for m in body["messages"] if m["role"] == "user"][-1]
    parts = user["content"] if isinstance(user["content"], list) else [{"type": "text", "text": user["content"]}]
    text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
    n_img = sum(
        1 for m in body["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"
    )
    return ANSWERS.get(text, f"echo {text} with {n_img} images")


class StubHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def _json(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._json(
                {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "test"}]}
            )
        self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.log.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            return self._json({"error": {"message": "not found"}}, 404)
        answer = stub_answer(body)
        base = {"id": "cmpl-1", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            return self._json(
                {**base, "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 5, "completion_tokens": len(answer.split()), "total_tokens": 5 + len(answer.split())}}
            )  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = answer.split(" ")
        pieces = [{"role": "assistant", "content": ""}] + [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(words)
        ]
        for d in pieces:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": d, "finish_reason": None}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        end = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.log = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def png(seed: int, w: int = 112, h: int = 84) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def uri(b: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(b).decode()


# -- RemoteEngine ----------------------------------------------------------------------------------
def test_remote_engine_sends_openai_payloads_and_streams_sse(stub):
    from geovl.inference import RemoteEngine

    server, url = stub
    server.log.clear()
    eng = RemoteEngine(url, api_key="sk-test", concurrency=4)  # model from /v1/models
    assert eng.model == "stub-model" and eng.base_url == url + "/v1"
    a, b = png(1), jpeg(2)
    multi = ChatRequest(
        [
            {"role": "system", "content": [text_part("You are an EO expert.")]},
            user_turn("Compare:", 2),
            assistant_turn("They differ."),
            user_turn("How?"),
        ],
        [a, b],
    )
    reqs = [ChatRequest([user_turn(f"q{i}", 1)], [png(10 + i)]) for i in range(6)] + [
        multi,
        ChatRequest([user_turn("Is there water?")], []),
    ]
    params = GenerationParams(max_new_tokens=7, temperature=0.5, top_p=0.8, seed=3)
    out = eng.generate(reqs, params)
    assert out == [f"echo q{i} with 1 images" for i in range(6)] + ["echo How? with 2 images", "yes"]
    assert eng.stats.samples == 8 and eng.stats.forward_calls == 0
    bodies = {json.dumps(r["body"]["messages"][-1]): r for r in server.log}
    rec = bodies[json.dumps({"role": "user", "content": [{"type": "text", "text": "How?"}]})]
    assert rec["path"] == "/v1/chat/completions" and rec["auth"] == "Bearer sk-test"
    body = rec["body"]
    assert body["model"] == "stub-model"
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (7, 0.5, 0.8, 3)
    assert not body.get("stream")
    assert body["messages"] == [
        {"role": "system", "content": "You are an EO expert."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri(a, "image/png")}},
            {"type": "image_url", "image_url": {"url": uri(b, "image/jpeg")}},
            {"type": "text", "text": "Compare:"},
        ]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "text", "text": "How?"}]},
    ]  # fmt: skip

    server.log.clear()
    deltas = list(eng.stream(multi, GenerationParams(max_new_tokens=5)))
    assert deltas == ["echo", " How?", " with", " 2", " images"]
    assert server.log[0]["body"]["stream"] is True and server.log[0]["body"]["temperature"] == 0.0
    eng.close()


def test_remote_engine_connection_failure_names_the_url():
    from geovl.inference import RemoteEngine

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(EngineError, match=rf"cannot connect to {url}"):
        RemoteEngine(url)  # needs /v1/models
    eng = RemoteEngine(url, model="m")
    with pytest.raises(EngineError, match=rf"cannot connect to {url}"):
        eng.generate([ChatRequest([user_turn("hi")], [])], GenerationParams(max_new_tokens=2))
    with pytest.raises(EngineError, match=rf"cannot connect to {url}"):
        list(eng.stream(ChatRequest([user_turn("hi")], []), GenerationParams(max_new_tokens=2)))


# -- the eval driver -------------------------------------------------------------------------------
def test_split_prompt_excludes_the_last_assistant_turn():
    from geovl.evaluate.generate import question_of, split_prompt

    a, b = png(1), png(2)
    s = {
        "id": "m1", "qtype": "open", "answer": "Two roads.", "source": "f#1", "meta": {},
        "messages": [
            user_turn("Look at this.", 1), assistant_turn("A town."),
            user_turn("And this one: what changed?", 1), assistant_turn("Two roads."),
        ],
        "images": [a, b],
    }  # fmt: skip
    req, ref = split_prompt(s)
    assert ref == "Two roads."
    assert req.messages == s["messages"][:3] and req.images == [a, b]
    assert question_of(req) == "And this one: what changed?"
    one = make_sample("x", "Is there water?", "yes", [a])
    req, ref = split_prompt(one)
    assert ref == "yes" and [m["role"] for m in req.messages] == ["user"] and req.images == [a]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """JSONL: 11 valid samples (text-only, multi-turn, zh/en), an invalid record (bad qtype) at index 5
    and, last, a sample whose PNG is corrupt (valid schema; only decoding fails)."""
    root = tmp_path_factory.mktemp("evaldata")
    path = root / "data.jsonl"
    lines = []
    for i in range(13):
        if i == 5:
            bad = make_sample("bad", "x?", "y", [], source="f#bad")
            bad["qtype"] = "riddle"
            lines.append(bad)
            continue
        q, ans, lang = [("Is there water?", "yes", "en"), ("有水吗？", "有", "zh"), ("Is there water?", "no", "en")][
            i % 3
        ]
        imgs = [png(i)] if i % 4 or i == 12 else []
        s = make_sample(
            f"s{i:02d}", q, ans, imgs, qtype="yes_no", source=f"data.jsonl#{i}", meta={"lang": lang, "scene": i}
        )
        if i == 7:  # multi-turn: an earlier exchange, the question of interest last
            s["messages"] = [
                user_turn("Describe the scene.", 1),
                assistant_turn("Fields."),
                user_turn(q),
                assistant_turn(ans),
            ]
        if i == 12:
            s["images"] = [b"\x89PNG\r\n\x1a\n" + b"garbage" * 20]
        lines.append(s)
    with open(path, "w", encoding="utf-8") as f:
        for s in lines:
            rec = dict(s, images=["data:image/png;base64," + base64.b64encode(b).decode() for b in s["images"]])
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def read_jsonl(p):
    return [json.loads(x) for x in open(p, encoding="utf-8")]


def test_eval_cli_local_batched_equals_one_by_one_and_resumes(tiny_model_dir, dataset, tmp_path, capsys):
    model = str(tiny_model_dir("qwen2.5-vl"))
    out8, out1 = tmp_path / "p8.jsonl", tmp_path / "p1.jsonl"
    common = ["--model", model, "--data", str(dataset), "--max-new-tokens", "4", "--no-progress"]
    assert main(["eval", *common, "--out", str(out8)]) == 0
    printed = capsys.readouterr().out
    assert "predicted 11 of 13 samples" in printed and "rejected 2" in printed
    assert main(["eval", *common, "--out", str(out1), "--batch-size", "1"]) == 0
    r8, r1 = read_jsonl(out8), read_jsonl(out1)
    assert [r["prediction"] for r in r8] == [r["prediction"] for r in r1]
    ids = [f"s{i:02d}" for i in range(12) if i != 5]
    assert [r["id"] for r in r8] == ids  # dataset order
    assert set(r8[0]) == {"id", "qtype", "question", "reference", "prediction", "source", "lang", "meta"}
    r7 = next(r for r in r8 if r["id"] == "s07")
    assert (r7["question"], r7["reference"], r7["lang"], r7["meta"]["scene"]) == ("有水吗？", "有", "zh", 7)
    assert next(r for r in r8 if r["id"] == "s01")["lang"] == "zh"
    rej = read_jsonl(tmp_path / "p8.rejects.jsonl")
    assert [(r["source"], r["id"], r["reason"]) for r in rej] == [
        ("f#bad", "bad", "bad_qtype"),
        ("data.jsonl#12", "s12", "undecodable_image"),
    ]

    # resume: 3 done + a torn line from a crash → only the rest is predicted, same result
    part = tmp_path / "part.jsonl"
    assert main(["eval", *common, "--out", str(part), "--limit", "3"]) == 0
    assert [r["id"] for r in read_jsonl(part)] == ids[:3]
    with open(part, "a", encoding="utf-8") as f:
        f.write('{"id": "s03", "predic')
    capsys.readouterr()
    assert main(["eval", *common, "--out", str(part), "--resume"]) == 0
    assert "skipped 3" in capsys.readouterr().out
    assert read_jsonl(part) == r8


def test_eval_cli_over_api_and_infer_compare_gt(stub, dataset, tmp_path, capsys):
    server, url = stub
    server.log.clear()
    out = tmp_path / "api.jsonl"
    rc = main(
        [
            "eval",
            "--api",
            url,
            "--api-key",
            "K",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    recs = read_jsonl(out)
    assert len(recs) == 12 and all(r["prediction"] == ANSWERS[r["question"]] for r in recs)
    assert len(server.log) == 12 and {r["body"]["max_tokens"] for r in server.log} == {3}
    first = next(r["body"] for r in server.log if r["body"]["messages"][-1]["content"][0].get("image_url"))
    sample1 = json.loads(open(dataset, encoding="utf-8").readlines()[1])
    assert first["messages"][-1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    urls = {
        r["body"]["messages"][-1]["content"][0]["image_url"]["url"]
        for r in server.log
        if r["body"]["messages"][-1]["content"][0].get("image_url")
    }
    assert sample1["images"][0] in urls  # the stored PNG bytes, as they are

    # infer --data --compare-gt: the stub says "yes"/"有", so the "no" samples are wrong
    res = tmp_path / "gt.jsonl"
    assert (
        main(["infer", "--api", url, "--data", str(dataset), "--out", str(res), "--compare-gt", "--no-progress"]) == 0
    )
    recs = read_jsonl(res)
    assert [r["correct"] for r in recs] == [r["reference"] in ("yes", "有") for r in recs]
    assert sum(r["correct"] for r in recs) == 9
    assert "correct: 9 / 12" in capsys.readouterr().out

    # infer --image over the API: streamed (SSE) to stdout; the image travels as a PNG data URI
    img = tmp_path / "a.png"
    img.write_bytes(png(5))
    server.log.clear()
    assert main(["infer", "--api", url, "--image", str(img), "-q", "Compare", "--image", str(img)]) == 0
    assert capsys.readouterr().out == "echo Compare with 2 images\n"
    body = server.log[0]["body"]
    assert body["stream"] is True and body["max_tokens"] == 128
    assert body["messages"][-1]["content"][0] == {"type": "image_url", "image_url": {"url": uri(png(5), "image/png")}}


def test_infer_cli_streams_reads_geotiff_and_lists(tiny_model_dir, tmp_path, capsys):
    import rasterio
    from rasterio.transform import from_origin

    from geovl.imagery.decode import load_image
    from geovl.inference import LocalEngine

    model = str(tiny_model_dir("qwen3-vl"))
    Image.open(io.BytesIO(png(3))).save(tmp_path / "a.png")
    tif = tmp_path / "b.tif"
    band = np.random.default_rng(4).integers(0, 4000, (4, 64, 64)).astype("uint16")
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint16",
        crs="EPSG:32650",
        transform=from_origin(500000, 4000000, 10, 10),
    ) as d:
        d.write(band)
    eng = LocalEngine(model)
    p = GenerationParams(max_new_tokens=5)
    a_bytes, b_bytes = load_image(tmp_path / "a.png").data, load_image(tif).data
    both = eng.generate([ChatRequest([user_turn("水体？", 2)], [a_bytes, b_bytes])], p)[0]
    singles = eng.generate([ChatRequest([user_turn("Water?", 1)], [x]) for x in (a_bytes, b_bytes)], p)
    eng.close()

    capsys.readouterr()
    assert (
        main(
            [
                "infer",
                "--model",
                model,
                "--image",
                str(tmp_path / "a.png"),
                "--image",
                str(tif),
                "-q",
                "水体？",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == both + "\n"

    lst = tmp_path / "list.txt"
    lst.write_text(f"a.png\n\n# a comment\nmissing.png\n{tif}\n", encoding="utf-8")
    out = tmp_path / "r.jsonl"
    rc = main(
        [
            "infer",
            "--model",
            model,
            "--images",
            str(lst),
            "-q",
            "Water?",
            "--out",
            str(out),
            "--max-new-tokens",
            "5",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert read_jsonl(out) == [
        {"image": "a.png", "question": "Water?", "prediction": singles[0]},
        {"image": str(tif), "question": "Water?", "prediction": singles[1]},
    ]
    rej = read_jsonl(tmp_path / "r.rejects.jsonl")
    assert [(r["source"], r["reason"]) for r in rej] == [("missing.png", "missing_image")]
    assert "answered 2 of 3 images" in capsys.readouterr().out


def test_infer_cli_user_errors(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir("qwen2-vl"))
    Image.open(io.BytesIO(png(1))).save(tmp_path / "a.png")
    assert main(["infer", "--model", model, "--image", str(tmp_path / "a.png"), "-q", "x", "--load-in-4bit"]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert main(["infer", "--model", model, "--image", str(tmp_path / "nope.png"), "-q", "x"]) == 2
    assert "nope.png does not exist" in capsys.readouterr().err
    assert main(["infer", "--model", model, "--images", str(tmp_path / "l.txt"), "-q", "x"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--model" in capsys.readouterr().err
    assert (
        main(["eval", "--model", str(tmp_path / "nomodel"), "--data", "x.jsonl", "--out", str(tmp_path / "o.jsonl")])
        == 2
    )
    assert "model folder not found" in capsys.readouterr().err
