"""Evaluation throughput: the one-by-one generate loop vs LocalEngine's batched generation.

Side by side in ONE run, on the same tiny Qwen2.5-VL (small vocabulary) and the same image
questions:

(a) the loop peers write — one ``model.generate`` per sample with plain transformers
    (AutoProcessor + AutoModelForImageTextToText, greedy);
(b) ``geovl.serve.LocalEngine`` at batch size 8 (left padding, length-sorted batches).

Reported: LLM forward calls per sample (exact, counted by a forward hook on the language model),
samples/s and their ratio, and whether the predictions are identical. Wall time on shared
machines varies a lot between runs, so each side is timed ``--repeats`` times alternately and
the best time of each is compared (the forward-call counts are exact and do not vary).

    python bench/bench_eval.py [--samples 48] [--max-new-tokens 16] [--out bench/results/eval.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUESTIONS = [
    "Is there water in this image?",
    "How many buildings are there?",
    "图中有没有森林？",
    "Is this area rural or urban?",
    "图中有多少条道路？",
    "What is the main land cover?",
]
SIZES = [(112, 112), (168, 112), (224, 224), (140, 84), (196, 140), (112, 168)]


def make_images(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def one_by_one(model_dir: str, questions: list[str], images: list[bytes], max_new_tokens: int) -> dict:
    """The seed's loop: one generate call per sample, plain transformers."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    calls = [0]
    model.model.language_model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def answer(q: str, img: bytes) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.open(io.BytesIO(img)).convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    answer(questions[0], images[0])  # warm-up, not counted
    calls[0] = 0
    t = time.perf_counter()
    preds = [answer(q, img) for q, img in zip(questions, images)]
    wall = time.perf_counter() - t
    return {"predictions": preds, "forward_calls": calls[0], "wall_s": wall}


def engine_batched(model_dir: str, questions: list[str], images: list[bytes], max_new_tokens: int, batch_size: int) -> dict:
    from geovl.data.schema import user_turn
    from geovl.serve import ChatRequest, GenerationParams, LocalEngine

    eng = LocalEngine(model_dir, batch_size=batch_size)
    reqs = [ChatRequest([user_turn(q, 1)], [img]) for q, img in zip(questions, images)]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    eng.generate(reqs[:1], params)  # warm-up, not counted
    eng.stats.reset()
    t = time.perf_counter()
    preds = eng.generate(reqs, params)
    wall = time.perf_counter() - t
    stats = eng.stats.as_dict()
    eng.close()
    return {"predictions": preds, "forward_calls": stats["forward_calls"], "generated_tokens": stats["generated_tokens"], "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: build a tiny qwen2.5-vl, small vocab, seed 0)")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (alternating); best time is compared")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval.json"))
    args = ap.parse_args(argv)

    import torch

    tmp = None
    model_dir = args.model
    if model_dir is None:
        from geovl.models.tiny import build_tiny

        tmp = tempfile.TemporaryDirectory(prefix="bench-eval-")
        model_dir = str(build_tiny("qwen2.5-vl", Path(tmp.name) / "tiny", vocab="small", seed=0))
    meta = json.loads((Path(model_dir) / "geovl_tiny.json").read_text()) if (Path(model_dir) / "geovl_tiny.json").exists() else {}
    n = args.samples
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    images = make_images(n)

    runs_a, runs_b = [], []
    for _ in range(args.repeats):
        runs_a.append(one_by_one(model_dir, questions, images, args.max_new_tokens))
        runs_b.append(engine_batched(model_dir, questions, images, args.max_new_tokens, args.batch_size))
    a = min(runs_a, key=lambda r: r["wall_s"])
    b = min(runs_b, key=lambda r: r["wall_s"])
    same = [x == y for x, y in zip(a["predictions"], b["predictions"])]
    consistent = all(r["predictions"] == a["predictions"] for r in runs_a) and all(r["predictions"] == b["predictions"] for r in runs_b)

    def side(r, name):
        return {
            "method": name,
            "forward_calls": r["forward_calls"],
            "forward_calls_per_sample": round(r["forward_calls"] / n, 3),
            "wall_s": round(r["wall_s"], 3),
            "samples_per_s": round(n / r["wall_s"], 2),
        }

    sa = side(a, "one generate() per sample (plain transformers)")
    sb = side(b, f"LocalEngine batch_size={args.batch_size} (left padding, length-sorted)")
    sb["generated_tokens"] = b["generated_tokens"]
    result = {
        "benchmark": "eval throughput: one-by-one loop vs batched LocalEngine",
        "model": {"folder": "tiny (built by geovl.models.tiny.build_tiny)" if tmp else model_dir, **{k: meta[k] for k in ("family", "vocab", "seed", "hidden", "layers", "vision_depth", "parameters") if k in meta}},
        "samples": n,
        "image_sizes": sorted({f"{w}x{h}" for w, h in SIZES}),
        "max_new_tokens": args.max_new_tokens,
        "greedy": True,
        "one_by_one": sa,
        "engine_batched": sb,
        "speedup_samples_per_s": round(sb["samples_per_s"] / sa["samples_per_s"], 2),
        "forward_call_ratio": round(a["forward_calls"] / max(b["forward_calls"], 1), 2),
        "identical_predictions": all(same),
        "identical_count": sum(same),
        "repeats": args.repeats,
        "wall_s_all_runs": {"one_by_one": [round(r["wall_s"], 3) for r in runs_a], "engine_batched": [round(r["wall_s"], 3) for r in runs_b]},
        "predictions_stable_across_repeats": consistent,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()},
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    rows = [("", "one-by-one", f"engine b={args.batch_size}", "ratio")]
    rows.append(("LLM forward calls / sample", f"{sa['forward_calls_per_sample']:.2f}", f"{sb['forward_calls_per_sample']:.2f}", f"{result['forward_call_ratio']:.2f}x fewer"))
    rows.append(("samples / s", f"{sa['samples_per_s']:.2f}", f"{sb['samples_per_s']:.2f}", f"{result['speedup_samples_per_s']:.2f}x"))
    rows.append(("wall s (best of %d)" % args.repeats, f"{sa['wall_s']:.2f}", f"{sb['wall_s']:.2f}", ""))
    rows.append(("identical predictions", "", f"{sum(same)}/{n}", "yes" if all(same) else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"→ {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
