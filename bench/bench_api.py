"""Benchmark the OpenAI-compatible API (`geovl serve`) with a tiny model on this machine.

The same requests (200; ``--quick`` 16; one image each, 3 image sizes, zh/en questions, 16 new tokens,
greedy; every 4th request streamed) are sent with the official `openai` client from threads, in rounds
interleaved A B C A B C A B C (≥ 3 rounds):

- ``batched-c8``   concurrency 8, server micro-batching on (``--batch-window-ms 10``)
- ``unbatched-c8`` concurrency 8, micro-batching off (``--batch-window-ms 0``): the baseline — the same
  server and engine, one request per generate call, as a server without micro-batching works
- ``sequential``   concurrency 1 against the batching server: the latency floor

The throughput ratio batched / unbatched is taken per round and reported as median (min–max).

Reported per run: errors, p50/p95 latency, p50/p95 time to first token of streamed requests,
requests/s, peak server RSS (psutil, sampled every 20 ms, server + children), engine generate
calls for the non-streamed requests (from /health; streamed requests go to ``engine.stream``). Answers of every run are compared with the sequential run (greedy: batching
must not change them). An error in any request fails the bench (no ratios written).

    python bench/bench_api.py [--quick] [--requests N] [--concurrency 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from abtest import MIN_REPEATS, behind, exact_same, finish, fmt_ratio, interleave, quick_from_env, ratio, spread  # noqa: E402
from serve_util import Server, data_uri, free_port, png  # noqa: E402

QUESTIONS = [
    "Is there water in the scene?",
    "图中有没有耕地？",
    "Are there buildings near the road?",
    "疑似违规建设的分布区域？",
]
SIZES = [(112, 112), (224, 168), (168, 84)]


def make_requests(n: int) -> list[dict]:
    imgs = [data_uri(png(100 + i, *SIZES[i % len(SIZES)])) for i in range(20)]
    reqs = []
    for i in range(n):
        content = [
            {"type": "image_url", "image_url": {"url": imgs[i % len(imgs)]}},
            {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
        ]
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
            for ch in client.chat.completions.create(
                model=model, messages=req["messages"], max_tokens=max_tokens, stream=True
            ):
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
    ap.add_argument("--quick", action="store_true", default=quick_from_env())
    ap.add_argument("--requests", type=int, help="default 200 (16 with --quick)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--family", default="qwen2.5-vl")
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/api.json")
    args = ap.parse_args()
    n_req = args.requests or (16 if args.quick else 200)
    conc = args.concurrency

    def body(env: dict) -> dict:
        from geovl.models.tiny import build_tiny

        tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
        model = build_tiny(args.family, tmp / "model", vocab="small", seed=0)
        reqs = make_requests(n_req)
        servers = {}
        for name, window in (("batched", "10"), ("unbatched", "0")):
            port = free_port()
            servers[name] = Server(["serve", "--model", str(model), "--port", str(port), "--served-model-name", "tiny",
                                    "--batch-window-ms", window, "--max-batch-size", str(conc), "--log-level", "warning"],
                                   tmp / f"{name}.log", port)  # fmt: skip
        texts: dict[str, list] = {}

        def side(label, srv, c):
            def go(i):
                summary, t = run(servers[srv], reqs, c, args.max_tokens)
                if summary["errors"]:
                    raise RuntimeError(f"{summary['errors']} request(s) failed, e.g. {summary['error_examples']}")
                texts.setdefault(label, t)
                summary["texts"] = t
                return summary

            return go

        try:
            for s in servers.values():
                s.start()
            for s in servers.values():
                s.wait()
            for s in servers.values():  # warm-up (first calls allocate caches)
                run(s, reqs[:8], 4, args.max_tokens)
            b_label, u_label = f"batched-c{conc}", f"unbatched-c{conc}"
            runs = interleave({b_label: side(b_label, "batched", conc), u_label: side(u_label, "unbatched", conc),
                               "sequential": side("sequential", "batched", 1)}, args.repeats)  # fmt: skip
        finally:
            for s in servers.values():
                s.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        ref = runs["sequential"][0]["texts"]
        stable = {label: exact_same(rs, "texts") for label, rs in runs.items()}
        differing = {label: sum(a != b for a, b in zip(rs[0]["texts"], ref)) for label, rs in runs.items()}
        for rs in runs.values():
            for r in rs:
                r.pop("texts")
        keys = (
            "requests_per_s",
            "latency_p50_ms",
            "latency_p95_ms",
            "ttft_p50_ms",
            "ttft_p95_ms",
            "peak_server_rss_mib",
            "engine_generate_calls",
        )
        b, u = runs[b_label], runs[u_label]
        thr = ratio(b, u, "requests_per_s", "requests/s with micro-batching over without, same concurrency, per round")
        lat = ratio(u, b, "latency_p50_ms", "p50 latency without micro-batching over with, per round")
        seq = ratio(
            b, runs["sequential"], "requests_per_s", "requests/s batched at concurrency over sequential, per round"
        )
        calls = {label: spread([r["engine_generate_calls"] for r in rs], 0) for label, rs in runs.items()}
        return {
            "what": "geovl serve, tiny random model, one image per request, greedy, every 4th request streamed",
            "size": "quick" if args.quick else "full",
            "repeats": args.repeats,
            "order": f"{b_label}, {u_label}, sequential in rounds",
            "settings": {
                "shared": {
                    "family": args.family,
                    "tiny": True,
                    "vocab": "small",
                    "max_tokens": args.max_tokens,
                    "requests": n_req,
                    "streamed": sum(r["stream"] for r in reqs),
                    "client": "official openai client, threads",
                    "warm_up": "8 requests per server before the rounds",
                },
                b_label: f"geovl serve --batch-window-ms 10 --max-batch-size {conc}; {conc} client threads",
                u_label: f"geovl serve --batch-window-ms 0 --max-batch-size {conc}; {conc} client threads",
                "sequential": "the batching server, 1 client thread",
            },  # fmt: skip
            "counts": {
                "engine_generate_calls": calls,
                "answers_differing_from_sequential": differing,
                "answers_stable_across_rounds": stable,
                "errors": 0,
            },
            "summary": {
                label: {k: spread([r[k] for r in rs], 2) for k in keys if rs[0].get(k) is not None}
                for label, rs in runs.items()
            },
            "ratios": {
                "throughput_batched_over_unbatched": thr,
                "p50_latency_unbatched_over_batched": lat,
                "throughput_batched_over_sequential": seq,
            },
            "behind": behind(thr, "requests/s with micro-batching vs without"),
            "runs": runs,
            "table": {
                "name": "API (`bench_api.py`)",
                "baseline": f"the same server with micro-batching off, same {conc} client threads",
                "counts": f"{n_req} requests × {args.repeats} rounds per side, 0 errors; engine generate calls for the "
                f"{n_req - sum(r['stream'] for r in reqs)} non-streamed requests {calls[b_label]['median']:.0f} vs "
                f"{calls[u_label]['median']:.0f} (median); answers differing from sequential: "
                f"{differing[b_label]} / {differing[u_label]}",
                "ratios": [
                    ["requests/s", "throughput_batched_over_unbatched"],
                    ["p50 latency (unbatched / batched)", "p50_latency_unbatched_over_batched"],
                ],
            },  # fmt: skip
        }

    rc = finish(args.out, body, "api")
    if rc == 0:
        r = json.loads(args.out.read_text())
        for k, v in r["ratios"].items():
            print(f"{k}: {fmt_ratio(v)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
