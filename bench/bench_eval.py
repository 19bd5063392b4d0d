"""Evaluation throughput: one ``generate`` per sample, plain batched ``generate``, and LocalEngine.

Three sides on the same tiny Qwen2.5-VL (small vocabulary) and the same image questions, greedy,
interleaved A B C A B C A B C (each side loads its model afresh every round, same process):

(a) ``one_by_one``   — one ``model.generate`` per sample, plain transformers;
(b) ``hf_batched``   — what a maintainer writes without our engine: plain transformers, the processor
    with ``padding_side="left"``, ``model.generate`` on batches of 8 in dataset order;
(c) ``engine``       — ``geovl.inference.LocalEngine`` at batch size 8 (left padding, length-sorted batches).

Counted exactly (``abtest.CallCounter`` wraps the language model's and the vision encoder's forward): LLM forward calls, vision encoder
calls, prefill positions (batch × padded prompt length of every prefill forward) against the real prompt
tokens, so the padding share of prefill shows what length sorting saves. Times: samples/s per run; the
ratios (c)/(a), (c)/(b) and (b)/(a) are taken per round and reported as median (min–max). Predictions
of every side are compared with the one-by-one side.

    python bench/bench_eval.py [--quick] [--repeats 3]   # writes bench/results/eval.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from abtest import (
    MIN_REPEATS,
    CallCounter,
    behind,
    exact_same,
    finish,
    fmt_ratio,
    interleave,
    quick_from_env,
    ratio,
    spread,
)

QUESTIONS = [
    "Is there water in this image?",
    "How many buildings are there?",
    "图中有没有森林？",
    "Is this area rural or urban?",
    "图中有多少条道路？",
    "What is the main land cover?",
]
SIZES = [(112, 112), (168, 112), (224, 224), (140, 84), (196, 140), (112, 168)]
SAMPLES = {"full": 48, "quick": 16}


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


def _hf(model_dir: str, padding_side: str):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, padding_side=padding_side)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return processor, model


def _prompts(processor, questions):
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    return [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]


def _pil(images):
    from PIL import Image

    return [Image.open(io.BytesIO(b)).convert("RGB") for b in images]


def hf_generate(model_dir: str, questions, images, max_new_tokens: int, batch_size: int) -> dict:
    """Plain transformers: ``batch_size=1`` is the one-by-one loop; > 1 left-pads batches in dataset order."""
    import torch

    processor, model = _hf(model_dir, "left")
    texts, pils = _prompts(processor, questions), _pil(images)

    def run(lo, hi):
        inputs = processor(text=texts[lo:hi], images=pils[lo:hi], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    with CallCounter() as cnt:
        run(0, min(batch_size, len(texts)))  # warm-up, not counted
        cnt.reset()
        t = time.perf_counter()
        preds = [p for lo in range(0, len(texts), batch_size) for p in run(lo, lo + batch_size)]
        wall = time.perf_counter() - t
    return {"predictions": preds, "wall_s": wall, **cnt.c}


def engine_generate(model_dir: str, questions, images, max_new_tokens: int, batch_size: int) -> dict:
    from geovl.data.schema import user_turn
    from geovl.inference import ChatRequest, GenerationParams, LocalEngine

    eng = LocalEngine(model_dir, batch_size=batch_size)
    reqs = [ChatRequest([user_turn(q, 1)], [img]) for q, img in zip(questions, images)]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    with CallCounter() as cnt:
        eng.generate(reqs[:batch_size], params)  # warm-up, not counted
        cnt.reset()
        t = time.perf_counter()
        preds = eng.generate(reqs, params)
        wall = time.perf_counter() - t
    eng.close()
    return {"predictions": preds, "wall_s": wall, **cnt.c}


def real_prompt_tokens(model_dir: str, questions, images) -> int:
    processor, _ = _hf(model_dir, "left")
    return sum(int(processor(text=[t], images=[p], return_tensors="pt")["input_ids"].shape[1])
               for t, p in zip(_prompts(processor, questions), _pil(images)))  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: build a tiny qwen2.5-vl, small vocab, seed 0)")
    ap.add_argument("--quick", action="store_true", default=quick_from_env())
    ap.add_argument("--samples", type=int, help=f"default {SAMPLES['full']} ({SAMPLES['quick']} with --quick)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS, help="interleaved rounds (>= 3)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval.json")
    args = ap.parse_args(argv)
    n = args.samples or SAMPLES["quick" if args.quick else "full"]
    bs = args.batch_size

    def body(env: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
            model_dir = args.model
            if model_dir is None:
                from geovl.models.tiny import build_tiny

                model_dir = str(build_tiny("qwen2.5-vl", Path(tmp) / "tiny", vocab="small", seed=0))
            meta_p = Path(model_dir) / "geovl_tiny.json"
            meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
            questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
            images = make_images(n)
            real = real_prompt_tokens(model_dir, questions, images)
            runs = interleave({
                "one_by_one": lambda i: hf_generate(model_dir, questions, images, args.max_new_tokens, 1),
                "hf_batched": lambda i: hf_generate(model_dir, questions, images, args.max_new_tokens, bs),
                "engine": lambda i: engine_generate(model_dir, questions, images, args.max_new_tokens, bs),
            }, args.repeats)  # fmt: skip
        for rs in runs.values():
            for r in rs:
                r["samples_per_s"] = n / r["wall_s"]
                r["wall_s"] = round(r["wall_s"], 3)
        ref = runs["one_by_one"][0]["predictions"]
        count_keys = ("forward_calls", "prefill_calls", "prefill_positions", "vision_calls", "vision_patches")
        sides = {}
        for side, rs in runs.items():
            c = {k: rs[0][k] for k in count_keys}
            c["forward_calls_per_sample"] = round(c["forward_calls"] / n, 3)
            c["prefill_padding_share"] = round(1 - real / c["prefill_positions"], 4)
            sides[side] = {
                "counts": c,
                "counts_stable_across_rounds": all(exact_same(rs, k) for k in count_keys),
                "predictions_stable_across_rounds": exact_same(rs, "predictions"),
                "identical_to_one_by_one": sum(a == b for a, b in zip(rs[0]["predictions"], ref)),
                "samples_per_s": spread([r["samples_per_s"] for r in rs], 2),
                "wall_s": spread([r["wall_s"] for r in rs]),
            }
        e, h, o = runs["engine"], runs["hf_batched"], runs["one_by_one"]
        ratios = {
            "engine_over_hf_batched": ratio(
                e,
                h,
                "samples_per_s",
                "samples/s of LocalEngine over plain batched generate (b=8, left-padded), per round",
            ),
            "engine_over_one_by_one": ratio(
                e, o, "samples_per_s", "samples/s of LocalEngine over one generate per sample, per round"
            ),
            "hf_batched_over_one_by_one": ratio(
                h, o, "samples_per_s", "samples/s of plain batched generate over one per sample, per round"
            ),
        }
        for rs in runs.values():
            for r in rs:
                r["samples_per_s"] = round(r["samples_per_s"], 3)
                r.pop("predictions")
        ce, ch, co = sides["engine"]["counts"], sides["hf_batched"]["counts"], sides["one_by_one"]["counts"]
        return {
            "what": "eval throughput: one generate per sample vs plain batched generate (b=8, left padding) vs LocalEngine (b=8)",
            "size": "quick" if args.quick else "full",
            "repeats": args.repeats,
            "order": "one_by_one, hf_batched, engine in rounds",
            "settings": {
                "shared": {
                    "model": {
                        "folder": "tiny (geovl.models.tiny.build_tiny)" if args.model is None else args.model,
                        **{
                            k: meta[k]
                            for k in ("family", "vocab", "seed", "hidden", "layers", "vision_depth", "parameters")
                            if k in meta
                        },
                    },
                    "samples": n,
                    "image_sizes": sorted({f"{w}x{h}" for w, h in SIZES}),
                    "max_new_tokens": args.max_new_tokens,
                    "greedy": True,
                    "dtype": "float32",
                    "warm_up": "one batch per run, not counted",
                },
                "one_by_one": "AutoProcessor + AutoModelForImageTextToText, model.generate per sample",
                "hf_batched": f"same, processor padding_side='left', model.generate on batches of {bs} in dataset order",
                "engine": f"geovl.inference.LocalEngine(batch_size={bs}): left padding, batches sorted by estimated prompt length",
            },  # fmt: skip
            "real_prompt_tokens": real,
            "sides": sides,
            "ratios": ratios,
            "behind": behind(ratios["engine_over_hf_batched"], "LocalEngine samples/s vs plain batched generate"),
            "runs": runs,
            "table": {
                "name": "eval (`bench_eval.py`)",
                "baseline": f"one `generate` per sample; plain `model.generate` on left-padded batches of {bs}",
                "counts": f"LLM forwards/sample {co['forward_calls_per_sample']:.1f} / {ch['forward_calls_per_sample']:.1f} / "
                f"{ce['forward_calls_per_sample']:.1f}; prefill padding {co['prefill_padding_share']:.0%} / "
                f"{ch['prefill_padding_share']:.0%} / {ce['prefill_padding_share']:.0%} (one-by-one / batched / engine); "
                f"{sides['engine']['identical_to_one_by_one']}/{n} engine answers identical to one-by-one",
                "ratios": [
                    ["engine vs batched generate", "engine_over_hf_batched"],
                    ["engine vs one-by-one", "engine_over_one_by_one"],
                ],
            },  # fmt: skip
        }

    rc = finish(args.out, body, "eval")
    if rc == 0:
        r = json.loads(args.out.read_text())
        for k, v in r["ratios"].items():
            print(f"{k}: {fmt_ratio(v)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
