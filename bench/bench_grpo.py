"""Benchmark: where a GRPO step spends its time — geovl ``train grpo`` vs a plain TRL ``GRPOTrainer``, interleaved.

Same tiny Qwen2.5-VL (hidden 128, the demo's size), same data (count / area / yes-no questions in
English and Chinese on 112 px images, stored as a geovl Parquet file), same reward (the routed rule
reward ``rs_reward``), same settings: full fine-tuning of every part, ``num_generations=4``,
8 completions per step, ``max_completion_length=8``, temperature 1, ``beta=0``, lr 1e-5, seed 0.

The plain TRL side is configured as the TRL docs describe for vision GRPO: a ``datasets.Dataset`` with
a ``prompt`` column (conversational, string content) and an ``image`` column (``datasets.Image``),
``bf16=False, use_cpu=True``, gradient checkpointing off (TRL turns it on by default; off is faster
here), processor with left padding. It has no further speed knob for this setting on a CPU (vLLM
generation needs a GPU). Both sides are
timed the same way, with timers around TRL's own methods (a subclass each; nothing else changes):

- generation = ``_generate_and_score_completions`` (prompt processing, ``model.generate``, rewards,
  advantages),
- loss forward = ``compute_loss``; backward = rest of ``training_step``,
- optimizer + other = train runtime minus those (optimizer step, scheduler, logging, data loading).

Each training run is a fresh subprocess (peak RSS per side); the sides alternate (geovl, TRL, geovl,
TRL, …) and ``completions / s`` = completions generated / train runtime; the ratio is taken per round
and reported as median (min–max). Exact counts per run (``abtest.CallCounter``): LLM forwards, prefill
forwards and positions, vision-encoder calls and patches.

    python bench/bench_grpo.py [--quick] [--repeats 3]   # writes bench/results/grpo.json
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

from abtest import (
    CallCounter,
    exact_same,
    finish,
    fmt_ratio,
    interleave,
    parse_args,
    peak_rss_mb,
    ratio,
    run_worker,
    serve_worker,
    spread,
)
from abtest import behind as behind_note

HERE = Path(__file__).resolve().parent
SIZES = {"full": {"samples": 192, "steps": 80}, "quick": {"samples": 24, "steps": 6}}
NUM_GEN = 4
BATCH = 8  # completions per step = 2 prompts × 4 generations
MAX_COMPLETION = 8
LR = 1e-5
SEED = 0
QA = [
    ("How many buildings are in the image?", "3", "count"),
    ("图中有多少栋建筑？", "5", "count"),
    ("耕地面积约为多少公顷？", "12.34公顷", "area"),
    ("What is the area of forest in square kilometres?", "0.514 km²", "area"),
    ("Is there water in the image?", "yes", "yes_no"),
    ("图中是否有林地？", "否", "yes_no"),
]


def _image(rng) -> bytes:
    import numpy as np
    from PIL import Image

    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(small).resize((112, 112), Image.BILINEAR).save(b, "PNG")
    return b.getvalue()


def build_inputs(root: Path, size: dict) -> tuple[Path, Path]:
    import numpy as np

    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.models.tiny import build_tiny

    model = build_tiny("qwen2.5-vl", root / "model", hidden=128, seed=SEED, max_pixels=12544)
    rng = np.random.default_rng(SEED)
    data = root / "bench.parquet"
    with DatasetWriter(data) as w:
        for i in range(size["samples"]):
            w.read_one()
            q, a, t = QA[i % len(QA)]
            w.write(make_sample(f"g{i}", q, a, [_image(rng)], qtype=t, source=f"bench#{i}"))
    return model, data


def _reward_means(log_history) -> dict:
    means = [r["reward"] for r in log_history if "reward" in r and r["reward"] is not None]
    lengths = [r["completions/mean_length"] for r in log_history if "completions/mean_length" in r]
    return {"reward_first": means[0] if means else None, "reward_last": means[-1] if means else None,
            "mean_completion_tokens": round(sum(lengths) / len(lengths), 3) if lengths else None}  # fmt: skip


def worker_geovl(model: Path, data: Path, out: Path, size: dict) -> dict:
    import torch  # noqa: F401 - imported before the clock starts, as on the TRL side
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from geovl.train.grpo import GRPORecipe, train_grpo
    from geovl.train.recipe import load_recipe

    STEPS = size["steps"]
    t0 = time.time()
    recipe = load_recipe(None, [
        f"model={model}", f"train_data={data}", f"output_dir={out}", f"max_steps={STEPS}", f"batch_size={BATCH}",
        f"num_generations={NUM_GEN}", f"max_completion_length={MAX_COMPLETION}", f"lr={LR}", f"seed={SEED}",
        "reward_funcs=[rs_reward]", "beta=0", "temperature=1.0", "tune_llm=full", "tune_vision=full", "tune_merger=full",
        "tune_embeddings=true", "lr_scheduler=constant", "report_to=[]", "progress_bar=false", "logging_steps=1",
        f"save_steps={10 * STEPS}", "min_pixels=3136", "max_pixels=12544",
    ], GRPORecipe)  # fmt: skip
    with CallCounter() as cnt:
        train_grpo(recipe)
    s = json.loads((out / "train_summary.json").read_text())
    t = s["timings"]
    return {
        "steps": s["steps"], "completions": t["generations"], "train_runtime_s": s["train_runtime_s"],
        "generate_s": t["generate_s"], "loss_forward_s": t["loss_forward_s"], "backward_s": round(t["train_step_s"] - t["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_progress_rewards(out), **cnt.c,
    }  # fmt: skip


def _progress_rewards(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines() if x.strip()]
    return _reward_means(recs)


def worker_trl(model: Path, data: Path, out: Path, size: dict) -> dict:
    import datasets
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from geovl.data.io import read_samples
    from geovl.rewards import rs_reward

    STEPS = size["steps"]
    t0 = time.time()
    rows = {"prompt": [], "image": [], "answer": [], "qtype": []}
    for s in read_samples(data):
        question = s["messages"][0]["content"][-1]["text"]
        rows["prompt"].append([{"role": "user", "content": question}])
        rows["image"].append(Image.open(io.BytesIO(s["images"][0])).convert("RGB"))
        rows["answer"].append(s["answer"])
        rows["qtype"].append(s["qtype"])
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "image": datasets.Image(), "answer": datasets.Value("string"), "qtype": datasets.Value("string"),
    }))  # fmt: skip
    processor = AutoProcessor.from_pretrained(model, padding_side="left")
    m = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    timings = {"generate_s": 0.0, "loss_forward_s": 0.0, "train_step_s": 0.0, "completions": 0}

    class TimedGRPOTrainer(GRPOTrainer):  # timers only; same as geovl's trainer subclass measures
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            o = super()._generate_and_score_completions(inputs)
            dt = time.perf_counter() - t
            timings["generate_s"] += dt
            timings["completions"] += int(o["completion_ids"].size(0))
            self._gen += dt
            return o

        def compute_loss(self, model, inputs, *a, **k):
            t = time.perf_counter()
            out_ = super().compute_loss(model, inputs, *a, **k)
            timings["loss_forward_s"] += time.perf_counter() - t
            return out_

        def training_step(self, model, inputs, num_items_in_batch=None):
            self._gen = 0.0
            t = time.perf_counter()
            r = super().training_step(model, inputs, num_items_in_batch)
            timings["train_step_s"] += time.perf_counter() - t - self._gen
            return r

    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=BATCH, num_generations=NUM_GEN, max_completion_length=MAX_COMPLETION,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", seed=SEED, temperature=1.0, beta=0.0,
        use_cpu=True, bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = TimedGRPOTrainer(
        model=m, reward_funcs=[rs_reward], args=args, train_dataset=ds, processing_class=processor
    )
    with CallCounter() as cnt:
        result = trainer.train()
    return {
        "steps": trainer.state.global_step, "completions": timings["completions"],
        "train_runtime_s": round(result.metrics["train_runtime"], 3), "generate_s": round(timings["generate_s"], 3),
        "loss_forward_s": round(timings["loss_forward_s"], 3),
        "backward_s": round(timings["train_step_s"] - timings["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_reward_means(trainer.state.log_history), **cnt.c,
    }  # fmt: skip


def _derive(r: dict) -> dict:
    rt = r["train_runtime_s"]
    r["other_s"] = round(rt - r["generate_s"] - r["loss_forward_s"] - r["backward_s"], 3)
    r["s_per_step"] = round(rt / max(r["steps"], 1), 4)
    r["completions_per_s"] = round(r["completions"] / rt, 2)
    for k in ("generate", "loss_forward", "backward", "other"):
        r[f"{k}_share"] = round(r[f"{k}_s"] / rt, 4)
    return r


COUNTS = ("completions", "forward_calls", "prefill_calls", "prefill_positions", "vision_calls", "vision_patches")


def main() -> int:
    a = parse_args(__doc__.split("\n")[0], HERE / "results" / "grpo.json")
    if a.worker:
        return serve_worker(a, {"geovl": worker_geovl, "trl": worker_trl})
    size_name = "quick" if a.quick else "full"
    size = SIZES[size_name]

    def body(env: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
            root = Path(tmp)
            model, data = build_inputs(root, size)
            runs = interleave({
                "geovl": lambda i: _derive(run_worker(__file__, "geovl", model, data, root / f"geovl{i}", size)),
                "trl": lambda i: _derive(run_worker(__file__, "trl", model, data, root / f"trl{i}", size)),
            }, a.repeats)  # fmt: skip
        for side, rs in runs.items():
            if not all(r["steps"] == size["steps"] for r in rs):
                raise RuntimeError(f"{side} ran {[r['steps'] for r in rs]} steps, expected {size['steps']}")
        ours, peer = runs["geovl"], runs["trl"]
        cps = ratio(ours, peer, "completions_per_s", "geovl completions/s over TRL's, per round")
        keys = ("completions_per_s", "s_per_step", "train_runtime_s", "generate_share", "loss_forward_share", "backward_share",
                "other_share", "peak_rss_mb", "mean_completion_tokens")  # fmt: skip
        behind = behind_note(cps, "geovl GRPO completions/s vs TRL's")
        return {
            "what": "where a GRPO step spends its time: geovl train grpo vs a plain TRL GRPOTrainer, same tiny model / data / "
            "reward / settings, each run a fresh subprocess, sides interleaved",
            "size": size_name,
            "repeats": a.repeats,
            "order": "geovl, trl alternating",
            "settings": {
                "shared": {
                    "model": "tiny Qwen2.5-VL (hidden 128, 2 LLM layers, 2 vision blocks), 112 px images (16 visual tokens)",
                    **size,
                    "num_generations": NUM_GEN,
                    "completions_per_step": BATCH,
                    "max_completion_length": MAX_COMPLETION,
                    "lr": LR,
                    "seed": SEED,
                    "beta": 0.0,
                    "temperature": 1.0,
                    "reward": "rs_reward (routed rules)",
                    "trained": "everything (full fine-tuning)",
                },
                "geovl": "geovl train grpo: tune_llm/vision/merger=full, tune_embeddings=true, lr_scheduler=constant, "
                "min_pixels=3136, max_pixels=12544",
                "trl": "GRPOTrainer: prompt + image columns, processor padding_side=left, bf16=False, use_cpu=True, "
                "gradient_checkpointing=False, lr_scheduler_type=constant, dataloader_num_workers=0",
                "timers": "generation = _generate_and_score_completions; loss forward = compute_loss; backward = rest of "
                "training_step; other = train runtime minus those (optimizer, logging, data)",
            },  # fmt: skip
            "counts": {side: {k: rs[0][k] for k in COUNTS} for side, rs in runs.items()},
            "counts_note": "completions are sampled (temperature 1), so forward calls can differ between rounds "
            "(generation stops early when all completions end)",
            "counts_stable_across_rounds": {
                side: all(exact_same(rs, k) for k in ("completions", "vision_calls")) for side, rs in runs.items()
            },
            "summary": {side: {k: spread([r[k] for r in rs], 4) for k in keys} for side, rs in runs.items()},
            "ratios": {
                "completions_per_s_geovl_over_trl": cps,
                "peak_rss_geovl_over_trl": ratio(ours, peer, "peak_rss_mb", "geovl peak RSS over TRL's, per round"),
            },
            "behind": behind,
            "runs": runs,
            "table": {
                "name": "GRPO (`bench_grpo.py`)",
                "baseline": "TRL `GRPOTrainer`, same settings (no faster CPU knob: vLLM generation needs a GPU)",
                "counts": f"{ours[0]['completions']} completions per run on both; generation "
                f"{spread([r['generate_share'] for r in ours])['median']:.0%} vs {spread([r['generate_share'] for r in peer])['median']:.0%} "
                f"of a step; vision calls {ours[0]['vision_calls']} vs {peer[0]['vision_calls']}; LLM forwards "
                f"{ours[0]['forward_calls']} vs {peer[0]['forward_calls']}; peak RSS "
                f"{spread([r['peak_rss_mb'] for r in ours])['median']:,.0f} vs {spread([r['peak_rss_mb'] for r in peer])['median']:,.0f} MB",
                "ratios": [["completions/s", "completions_per_s_geovl_over_trl"]],
            },  # fmt: skip
        }

    rc = finish(a.out, body, "grpo")
    if rc == 0:
        r = json.loads(a.out.read_text())
        print(f"completions/s geovl/TRL: {fmt_ratio(r['ratios']['completions_per_s_geovl_over_trl'])}")
        if r["behind"]:
            print("BEHIND:", r["behind"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
