"""Benchmark the OpenAI-compatible API (`geovl serve`) with a tiny model on this machine.

The same 200 requests (one image each, 3 image sizes, zh/en questions, 16 new tokens, greedy; every
4th request streamed) are sent with the official `openai` client from threads:

- ``batched-c8``   concurrency 8, server micro-batching on (``--batch-window-ms 10``)
- ``unbatched-c8`` concurrency 8, micro-batching off (``--batch-window-ms 0``): the baseline
- ``sequential``   concurrency 1 against the batching server: the latency floor

Reported per run: errors, p50/p95 latency, p50/p95 time to first token of streamed requests,
requests/s, peak server RSS (psutil, sampled every 20 ms, server + children), engine generate
calls (from /health). Answers of every run are compared with the sequential run (greedy: batching
must not change them). Wall time on these machines varies between runs (NOTES §6): compare the
runs of one invocation with each other, not with other days.

    python bench/bench_api.py [--requests 200] [--concurrency 8] [--out bench/results/api.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_util import Server, data_uri, free_port, png  # noqa: E402

QUESTIONS = ["Is there water in the scene?", "图中有没有耕地？", "Are there buildings near the road?", "疑似违规建设的分布区域？"]
SIZES = [(112, 112), (224, 168), (168, 84)]


def make_requests(n: int) -> list[dict]:
    imgs = [data_uri(png(100 + i, *SIZES[i % len(SIZES)])) for i in range(20)]
    reqs = []
    for i in range(n):
        content = [{"type": "image_url", "image_url": {"url": imgs[i % len(imgs)]}}, {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]
        reqs.append({"messages": [{"role": "user", "content": content}], "stream": i % 4 == 3})
    return reqs


class RSSSampler:
    def __init__(self, pid: int, every: float = 0.02):
        import psutil

        self.proc = psutil.Process(pid)
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def one(client, model: str, req: dict, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    try:
        if req["stream"]:
            ttft, parts = None, []
            for ch in client.chat.completions.create(model=model, messages=req["messages"], max_tokens=max_tokens, stream=True):
                if ch.choices and ch.choices[0].delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(ch.choices[0].delta.content)
            return {"ok": True, "latency": time.perf_counter() - t0, "ttft": ttft, "text": "".join(parts)}
        r = client.chat.completions.create(model=model, messages=req["messages"], max_tokens=max_tokens)
        return {"ok": True, "latency": time.perf_counter() - t0, "text": r.choices[0].message.content}
    except Exception as e:  # noqa: BLE001 - counted as an error
        return {"ok": False, "latency": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"[:200]}


def run(server: Server, reqs: list[dict], concurrency: int, max_tokens: int) -> tuple[dict, list]:
    import httpx
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=600)
    calls0 = httpx.get(server.url + "/health").json()["engine_calls"]
    with RSSSampler(server.proc.pid) as rss:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda r: one(client, "tiny", r, max_tokens), reqs))
        wall = time.perf_counter() - t0
    calls = httpx.get(server.url + "/health").json()["engine_calls"] - calls0
    lat = np.array([r["latency"] for r in results if r["ok"]])
    ttft = np.array([r["ttft"] for r in results if r["ok"] and r.get("ttft") is not None])
    errors = [r["error"] for r in results if not r["ok"]]
    pct = lambda a, q: round(float(np.percentile(a, q)) * 1000, 1) if len(a) else None  # noqa: E731
    summary = {
        "requests": len(reqs),
        "streamed": sum(r["stream"] for r in reqs),
        "concurrency": concurrency,
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(reqs) / wall, 2),
        "latency_p50_ms": pct(lat, 50),
        "latency_p95_ms": pct(lat, 95),
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p95_ms": pct(ttft, 95),
        "peak_server_rss_mib": round(rss.peak / 2**20, 1),
        "engine_generate_calls": calls,
    }
    return summary, [r.get("text") for r in results]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--family", default="qwen2.5-vl")
    ap.add_argument("--out", default=str(ROOT / "bench/results/api.json"))
    args = ap.parse_args()

    from geovl.models.tiny import build_tiny

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    model = build_tiny(args.family, tmp / "model", vocab="small", seed=0)
    reqs = make_requests(args.requests)
    servers = {}
    for name, window in (("batched", "10"), ("unbatched", "0")):
        port = free_port()
        servers[name] = Server(["serve", "--model", str(model), "--port", str(port), "--served-model-name", "tiny", "--batch-window-ms", window,
                                "--max-batch-size", str(args.concurrency), "--log-level", "warning"], tmp / f"{name}.log", port)
    results, texts = {}, {}
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait()
        for s in servers.values():  # warm-up (first calls allocate caches)
            run(s, reqs[:8], 4, args.max_tokens)
        plan = [("sequential", "batched", 1), ("batched-c%d" % args.concurrency, "batched", args.concurrency), ("unbatched-c%d" % args.concurrency, "unbatched", args.concurrency)]
        for label, srv, conc in plan:
            print(f"running {label} ...", file=sys.stderr, flush=True)
            results[label], texts[label] = run(servers[srv], reqs, conc, args.max_tokens)
    finally:
        for s in servers.values():
            s.stop()
    ref = texts["sequential"]
    for label in results:
        results[label]["answers_differing_from_sequential"] = sum(a != b for a, b in zip(texts[label], ref))
    b, u = results[plan[1][0]], results[plan[2][0]]
    out = {
        "what": "geovl serve, tiny random model, one image per request, greedy, every 4th request streamed",
        "model": {"family": args.family, "tiny": True, "max_tokens": args.max_tokens},
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": results,
        "ratios": {
            "throughput_batched_over_unbatched": round(b["requests_per_s"] / u["requests_per_s"], 2),
            "p50_latency_unbatched_over_batched": round(u["latency_p50_ms"] / b["latency_p50_ms"], 2),
            "throughput_batched_over_sequential": round(b["requests_per_s"] / results["sequential"]["requests_per_s"], 2),
        },
        "note": "Wall times vary between runs on shared 2-core machines (NOTES §6); compare runs of one invocation.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    cols = ["errors", "requests_per_s", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "peak_server_rss_mib", "engine_generate_calls", "answers_differing_from_sequential"]
    print(f"{'run':<16}" + "".join(f"{c:>14}" for c in ["errors", "req/s", "p50 ms", "p95 ms", "TTFT p50", "TTFT p95", "RSS MiB", "gen calls", "diff answers"]))
    for label, r in results.items():
        print(f"{label:<16}" + "".join(f"{str(r[c]):>14}" for c in cols))
    print("ratios:", json.dumps(out["ratios"]))
    print(f"→ {args.out}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
