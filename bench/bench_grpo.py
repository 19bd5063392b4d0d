"""Benchmark: where a GRPO step spends its time — geovl ``train grpo`` vs a plain TRL ``GRPOTrainer``, one run.

Same tiny Qwen2.5-VL (hidden 128, the demo's size), same data (count / area / yes-no questions in
English and Chinese on 112 px images, stored as a geovl Parquet file), same reward (the routed rule
reward ``rs_reward``), same settings: full fine-tuning of every part, ``num_generations=4``,
8 completions per step, ``max_completion_length=8``, temperature 1, ``beta=0``, lr 1e-5, seed 0.

The plain TRL side is configured as the TRL docs and NOTES §6 describe: a ``datasets.Dataset`` with a
``prompt`` column (conversational, string content) and an ``image`` column (``datasets.Image``),
``bf16=False, use_cpu=True``, gradient checkpointing off (TRL turns it on by default). Both sides are
timed the same way, with timers around TRL's own methods (a subclass each; nothing else changes):

- generation = ``_generate_and_score_completions`` (prompt processing, ``model.generate``, rewards,
  advantages),
- loss forward = ``compute_loss``; backward = rest of ``training_step``,
- optimizer + other = train runtime minus those (optimizer step, scheduler, logging, data loading).

Each trainer runs in its own subprocess (peak RSS per side); ``completions / s`` = completions
generated / train runtime. Wall time varies 3–40× on shared machines (NOTES §6): compare the two
columns of one run, and the shares, not runs.

    python bench/bench_grpo.py            # writes bench/results/grpo.json and prints a table
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

from abtest import parse_args, peak_rss_mb, run_worker, serve_worker  # bench/abtest.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
N_SAMPLES = 192
STEPS = 80
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


def build_inputs(root: Path) -> tuple[Path, Path]:
    import numpy as np

    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.models.tiny import build_tiny

    model = build_tiny("qwen2.5-vl", root / "model", hidden=128, seed=SEED, max_pixels=12544)
    rng = np.random.default_rng(SEED)
    data = root / "bench.parquet"
    with DatasetWriter(data) as w:
        for i in range(N_SAMPLES):
            w.read_one()
            q, a, t = QA[i % len(QA)]
            w.write(make_sample(f"g{i}", q, a, [_image(rng)], qtype=t, source=f"bench#{i}"))
    return model, data


def _reward_means(log_history) -> dict:
    means = [r["reward"] for r in log_history if "reward" in r and r["reward"] is not None]
    lengths = [r["completions/mean_length"] for r in log_history if "completions/mean_length" in r]
    return {"reward_first": means[0] if means else None, "reward_last": means[-1] if means else None,
            "mean_completion_tokens": round(sum(lengths) / len(lengths), 3) if lengths else None}  # fmt: skip


def worker_geovl(model: Path, data: Path, out: Path) -> dict:
    import torch  # noqa: F401 - imported before the clock starts, as on the TRL side
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from geovl.train.grpo import GRPORecipe, train_grpo
    from geovl.train.recipe import load_recipe

    t0 = time.time()
    recipe = load_recipe(None, [
        f"model={model}", f"train_data={data}", f"output_dir={out}", f"max_steps={STEPS}", f"batch_size={BATCH}",
        f"num_generations={NUM_GEN}", f"max_completion_length={MAX_COMPLETION}", f"lr={LR}", f"seed={SEED}",
        "reward_funcs=[rs_reward]", "beta=0", "temperature=1.0", "tune_llm=full", "tune_vision=full", "tune_merger=full",
        "tune_embeddings=true", "lr_scheduler=constant", "report_to=[]", "progress_bar=false", "logging_steps=1",
        f"save_steps={10 * STEPS}", "min_pixels=3136", "max_pixels=12544",
    ], GRPORecipe)  # fmt: skip
    train_grpo(recipe)
    s = json.loads((out / "train_summary.json").read_text())
    t = s["timings"]
    return {
        "steps": s["steps"], "completions": t["generations"], "train_runtime_s": s["train_runtime_s"],
        "generate_s": t["generate_s"], "loss_forward_s": t["loss_forward_s"], "backward_s": round(t["train_step_s"] - t["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_progress_rewards(out),
    }  # fmt: skip


def _progress_rewards(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines() if x.strip()]
    return _reward_means(recs)


def worker_trl(model: Path, data: Path, out: Path) -> dict:
    import datasets
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from geovl.data.io import read_samples
    from geovl.rewards import rs_reward

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
    trainer = TimedGRPOTrainer(model=m, reward_funcs=[rs_reward], args=args, train_dataset=ds, processing_class=processor)
    result = trainer.train()
    return {
        "steps": trainer.state.global_step, "completions": timings["completions"],
        "train_runtime_s": round(result.metrics["train_runtime"], 3), "generate_s": round(timings["generate_s"], 3),
        "loss_forward_s": round(timings["loss_forward_s"], 3),
        "backward_s": round(timings["train_step_s"] - timings["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_reward_means(trainer.state.log_history),
    }  # fmt: skip


def _derive(r: dict) -> dict:
    rt = r["train_runtime_s"]
    r["other_s"] = round(rt - r["generate_s"] - r["loss_forward_s"] - r["backward_s"], 3)
    r["s_per_step"] = round(rt / max(r["steps"], 1), 4)
    r["completions_per_s"] = round(r["completions"] / rt, 2)
    for k in ("generate", "loss_forward", "backward", "other"):
        r[f"{k}_share"] = round(r[f"{k}_s"] / rt, 4)
    return r


def main() -> int:
    a = parse_args(__doc__.split("\n")[0], HERE / "results" / "grpo.json")
    if a.worker:
        return serve_worker(a, {"geovl": worker_geovl, "trl": worker_trl})

    import torch
    import transformers
    import trl

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        root = Path(tmp)
        model, data = build_inputs(root)
        ours = _derive(run_worker(__file__, "geovl", model, data, root / "geovl"))
        peer = _derive(run_worker(__file__, "trl", model, data, root / "trl"))
    result = {
        "what": "where a GRPO step spends its time: geovl train grpo vs a plain TRL GRPOTrainer, same tiny model / data / "
                "reward / settings, each in a subprocess, one run",
        "setup": {
            "model": "tiny Qwen2.5-VL (hidden 128, 2 LLM layers, 2 vision blocks), 112 px images (16 visual tokens)",
            "samples": N_SAMPLES, "steps": STEPS, "num_generations": NUM_GEN, "completions_per_step": BATCH,
            "max_completion_length": MAX_COMPLETION, "lr": LR, "seed": SEED, "beta": 0.0, "reward": "rs_reward (routed rules)",
            "trained": "everything (full fine-tuning)",
            "trl_config": "prompt + image columns, bf16=False, use_cpu=True, gradient_checkpointing=False",
            "timers": "generation = _generate_and_score_completions; loss forward = compute_loss; backward = rest of "
                      "training_step; other = train runtime minus those (optimizer, logging, data)",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "geovl": ours,
        "trl": peer,
        "ratios": {
            "completions_per_s_geovl_over_trl": round(ours["completions_per_s"] / peer["completions_per_s"], 3),
            "generate_share_geovl": ours["generate_share"],
            "generate_share_trl": peer["generate_share"],
            "peak_rss_geovl_over_trl": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        },
        "same_steps": ours["steps"] == peer["steps"] == STEPS,
        "date": time.strftime("%Y-%m-%d"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    rows = [
        ("steps", "steps", "{}"),
        ("completions generated", "completions", "{}"),
        ("train time (s)", "train_runtime_s", "{:.2f}"),
        ("s / step", "s_per_step", "{:.3f}"),
        ("completions / s", "completions_per_s", "{:.1f}"),
        ("generation (s)", "generate_s", "{:.2f}"),
        ("  share", "generate_share", "{:.1%}"),
        ("loss forward (s)", "loss_forward_s", "{:.2f}"),
        ("  share", "loss_forward_share", "{:.1%}"),
        ("backward (s)", "backward_s", "{:.2f}"),
        ("  share", "backward_share", "{:.1%}"),
        ("optimizer + other (s)", "other_s", "{:.2f}"),
        ("  share", "other_share", "{:.1%}"),
        ("mean completion tokens", "mean_completion_tokens", "{}"),
        ("reward first → last step", None, None),
        ("wall incl. data + model loading (s)", "wall_s", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:,.0f}"),
    ]
    print(f"{'':36}{'geovl':>14}{'TRL GRPOTrainer':>18}")
    for label, key, fmt in rows:
        if key is None:
            f = lambda r: f"{r['reward_first']:.3f}→{r['reward_last']:.3f}"  # noqa: E731
            print(f"{label:36}{f(ours):>14}{f(peer):>18}")
            continue
        print(f"{label:36}{fmt.format(ours[key]):>14}{fmt.format(peer[key]):>18}")
    print(f"\ncompletions/s geovl / TRL: {result['ratios']['completions_per_s_geovl_over_trl']:.2f}x; "
          f"generation is {ours['generate_share']:.0%} (geovl) / {peer['generate_share']:.0%} (TRL) of a step")  # fmt: skip
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
