"""RemoteEngine retries a 429/503 from an OpenAI-compatible server (vLLM queues full) through the openai
client's own retries, and does not retry what cannot succeed (400). A local fake server answers from a
script of statuses and counts the requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from geovl.data.schema import user_turn
from geovl.inference.engine import ChatRequest, EngineError, GenerationParams
from geovl.inference.remote import RemoteEngine


class ScriptedHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype="application/json", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            code = self.server.script.pop(0) if self.server.script else 200
        if code != 200:
            err = json.dumps({"error": {"message": f"scripted {code}", "type": "server_error", "code": code}}).encode()
            # retry-after-ms keeps the client's backoff short in the test (it honours the server's hint)
            self._send(code, err, extra=[("retry-after-ms", "10")])
            return
        if body.get("stream"):
            chunks = [
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}],
                }
                for t in ("ok", "!")
            ]
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self._send(200, sse.encode(), ctype="text/event-stream")
            return
        resp = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        self._send(200, json.dumps(resp).encode())


@pytest.fixture
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    srv.lock, srv.requests, srv.script = threading.Lock(), [], []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


REQ = ChatRequest([user_turn("how many ships?")], [])
P = GenerationParams(max_new_tokens=4)


def test_default_engine_retries_at_least_twice(fake):
    eng = RemoteEngine(fake.url, model="m")
    assert eng.max_retries >= 2 and eng.client.max_retries == eng.max_retries


@pytest.mark.parametrize("script", [[503], [429], [503, 429]])
def test_a_busy_server_is_retried_until_it_answers(fake, script):
    fake.script = list(script)
    eng = RemoteEngine(fake.url, model="m")
    assert eng.generate([REQ], P) == ["answer"]
    assert len(fake.requests) == len(script) + 1  # each refusal, then the answer
    assert all(r == fake.requests[0] for r in fake.requests)  # the same request each time
    assert eng.stats.samples == 1 and eng.stats.generated_tokens == 1


def test_a_stream_is_retried_too(fake):
    fake.script = [503]
    eng = RemoteEngine(fake.url, model="m")
    assert "".join(eng.stream(REQ, P)) == "ok!"
    assert len(fake.requests) == 2 and fake.requests[-1]["stream"] is True


def test_retries_run_out_with_a_clear_error(fake):
    fake.script = [503, 503, 503, 503]
    eng = RemoteEngine(fake.url, model="m", max_retries=2)
    with pytest.raises(EngineError, match="answered HTTP 503"):
        eng.generate([REQ], P)
    assert len(fake.requests) == 3  # the request and 2 retries


def test_retries_are_configurable(fake):
    fake.script = [503]
    with pytest.raises(EngineError, match="answered HTTP 503"):
        RemoteEngine(fake.url, model="m", max_retries=0).generate([REQ], P)
    assert len(fake.requests) == 1
    with pytest.raises(EngineError, match="max_retries must be >= 0"):
        RemoteEngine(fake.url, model="m", max_retries=-1)


def test_a_bad_request_is_not_retried(fake):
    fake.script = [400]
    with pytest.raises(EngineError, match="answered HTTP 400"):
        RemoteEngine(fake.url, model="m").generate([REQ], P)
    assert len(fake.requests) == 1


def test_eval_cli_option_reaches_the_engine(fake):
    from geovl.inference import open_engine

    assert open_engine(api=fake.url, model="m").max_retries == 2
    assert open_engine(api=fake.url, model="m", api_retries=5).client.max_retries == 5


def test_api_retries_flag(fake):
    from geovl.cli import build_parser
    from geovl.commands.eval import open_engine_from_args

    for argv, want in [([], 2), (["--api-retries", "5"], 5), (["--api-retries", "0"], 0)]:
        args = build_parser().parse_args(
            ["eval", "--api", fake.url, "--model", "m", "--data", "d.jsonl", "--out", "o.jsonl", *argv]
        )
        assert open_engine_from_args(args).client.max_retries == want
