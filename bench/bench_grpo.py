"""Benchmark: shared-prompt GRPO rollouts — geovl ``train grpo share_prompts=true`` vs a plain TRL ``GRPOTrainer``,
interleaved, at G = 4 and G = 8 completions per prompt, on image-heavy prompts.

Same tiny Qwen2.5-VL (hidden 128, the demo's size), same data (count / area / yes-no questions in
English and Chinese on 448 px images: 256 visual tokens per prompt, pixel bounds pinned to exactly that on
both sides), same reward (the routed rule reward ``rs_reward``), same settings: full fine-tuning of every
part, 2 prompts per step (so 2 × G completions per step), ``max_completion_length=8``, temperature 1,
``beta=0``, lr 1e-5, seed 0.

geovl runs with ``share_prompts=true``: each group's image is encoded once and its prompt prefilled once, the
G completions branch from the shared KV cache (``geovl/train/shared_rollout.py``). The plain TRL side is
configured as the TRL docs describe for vision GRPO: a ``datasets.Dataset`` with a ``prompt`` column
(conversational, string content) and an ``image`` column (``datasets.Image``), ``bf16=False, use_cpu=True``,
gradient checkpointing off (TRL turns it on by default; off is faster here), processor with left padding,
``dataloader_num_workers=0``. It has no further speed knob for this setting on a CPU: vLLM generation (which
caches prefixes) needs a GPU, and transformers continuous batching (``use_transformers_continuous_batching``)
passes no images. Both sides are timed the same way, with timers around TRL's own methods (a subclass each;
nothing else changes):

- generation = ``_generate_and_score_completions`` (prompt processing, sampling, rewards, advantages),
- loss forward = ``compute_loss``; backward = rest of ``training_step``,
- optimizer + other = train runtime minus those (optimizer step, scheduler, logging, data loading).

Each training run is a fresh subprocess (peak RSS per side); each round runs geovl G=4, TRL G=4, geovl G=8,
TRL G=8, and ``completions / s`` = completions generated / train runtime; the ratio is taken per round and
reported as median (min–max). Exact counts (``abtest.CallCounter``: LLM forwards, prefill forwards and their
batch × length positions, vision-encoder forwards and patches), in total and for the rollouts alone (inside
TRL's ``_generate``, which both sides run): per group, images encoded (vision patches / 1,024 patches per
image) and prompt positions prefilled.

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
SIZES = {"full": {"samples": 48, "steps": 12}, "quick": {"samples": 12, "steps": 3}}
GROUPS = (4, 8)  # num_generations compared
PROMPTS_PER_STEP = 2  # completions per step = 2 × G
IMAGE_PX = 448  # 448 × 448 px = 32 × 32 patches of 14 px = 1,024 patches = 256 visual tokens (2 × 2 merge)
PIXELS = IMAGE_PX * IMAGE_PX
PATCHES_PER_IMAGE = (IMAGE_PX // 14) ** 2
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
    Image.fromarray(small).resize((IMAGE_PX, IMAGE_PX), Image.BILINEAR).save(b, "PNG")
    return b.getvalue()


def build_inputs(root: Path, size: dict) -> tuple[Path, Path]:
    import numpy as np

    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.models.tiny import build_tiny

    model = build_tiny("qwen2.5-vl", root / "model", hidden=128, seed=SEED, min_pixels=PIXELS, max_pixels=PIXELS)
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


class RolloutCounts:
    """The share of ``CallCounter``'s counts spent in the rollouts: the deltas over every call of TRL's
    ``GRPOTrainer._generate`` (prompt processing + sampling; both sides run it, geovl through its hooks), as
    ``rollout_<count>``, plus ``rollout_groups`` (prompts per batch / G, summed) and ``rollout_prompt_len``
    (the padded prompt length of each batch)."""

    def __init__(self, counter: CallCounter):
        self.cnt = counter
        self.c = {f"rollout_{k}": 0 for k in counter.c} | {"rollout_groups": 0, "rollout_prompt_len": []}

    def __enter__(self):
        from trl import GRPOTrainer

        self._orig = orig = GRPOTrainer._generate
        me = self

        def counted(trainer, prompts):
            before = dict(me.cnt.c)
            out = orig(trainer, prompts)
            for k, v in me.cnt.c.items():
                me.c[f"rollout_{k}"] += v - before[k]
            me.c["rollout_groups"] += len(prompts) // trainer.num_generations
            me.c["rollout_prompt_len"].append(max(len(x) for x in out[0]))
            return out

        GRPOTrainer._generate = counted
        return self

    def __exit__(self, *exc):
        from trl import GRPOTrainer

        GRPOTrainer._generate = self._orig


def worker_geovl(model: Path, data: Path, out: Path, size: dict) -> dict:
    import torch  # noqa: F401 - imported before the clock starts, as on the TRL side
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from geovl.train.grpo import GRPORecipe, train_grpo
    from geovl.train.recipe import load_recipe

    STEPS, G = size["steps"], size["G"]
    t0 = time.time()
    recipe = load_recipe(None, [
        f"model={model}", f"train_data={data}", f"output_dir={out}", f"max_steps={STEPS}", f"batch_size={PROMPTS_PER_STEP * G}",
        f"num_generations={G}", f"max_completion_length={MAX_COMPLETION}", f"lr={LR}", f"seed={SEED}",
        "reward_funcs=[rs_reward]", "beta=0", "temperature=1.0", "tune_llm=full", "tune_vision=full", "tune_merger=full",
        "tune_embeddings=true", "lr_scheduler=constant", "report_to=[]", "progress_bar=false", "logging_steps=1",
        f"save_steps={10 * STEPS}", f"min_pixels={PIXELS}", f"max_pixels={PIXELS}", "share_prompts=true",
    ], GRPORecipe)  # fmt: skip
    with CallCounter() as cnt, RolloutCounts(cnt) as roll:
        train_grpo(recipe)
    s = json.loads((out / "train_summary.json").read_text())
    t = s["timings"]
    return {
        "steps": s["steps"], "completions": t["generations"], "train_runtime_s": s["train_runtime_s"],
        "generate_s": t["generate_s"], "loss_forward_s": t["loss_forward_s"], "backward_s": round(t["train_step_s"] - t["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_progress_rewards(out), **cnt.c, **roll.c,
        "share_counts": s["share_counts"],
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

    STEPS, G = size["steps"], size["G"]
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
        output_dir=str(out), per_device_train_batch_size=PROMPTS_PER_STEP * G, num_generations=G, max_completion_length=MAX_COMPLETION,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", seed=SEED, temperature=1.0, beta=0.0,
        use_cpu=True, bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = TimedGRPOTrainer(
        model=m, reward_funcs=[rs_reward], args=args, train_dataset=ds, processing_class=processor
    )
    with CallCounter() as cnt, RolloutCounts(cnt) as roll:
        result = trainer.train()
    return {
        "steps": trainer.state.global_step, "completions": timings["completions"],
        "train_runtime_s": round(result.metrics["train_runtime"], 3), "generate_s": round(timings["generate_s"], 3),
        "loss_forward_s": round(timings["loss_forward_s"], 3),
        "backward_s": round(timings["train_step_s"] - timings["loss_forward_s"], 3),
        "wall_s": round(time.time() - t0, 2), "peak_rss_mb": peak_rss_mb(), **_reward_means(trainer.state.log_history), **cnt.c,
        **roll.c,
    }  # fmt: skip


def _derive(r: dict) -> dict:
    rt = r["train_runtime_s"]
    r["other_s"] = round(rt - r["generate_s"] - r["loss_forward_s"] - r["backward_s"], 3)
    r["s_per_step"] = round(rt / max(r["steps"], 1), 4)
    r["completions_per_s"] = round(r["completions"] / rt, 2)
    for k in ("generate", "loss_forward", "backward", "other"):
        r[f"{k}_share"] = round(r[f"{k}_s"] / rt, 4)
    g = r["rollout_groups"]
    r["per_group"] = {
        "images_encoded": r["rollout_vision_patches"] / PATCHES_PER_IMAGE / g,
        "vision_patches": r["rollout_vision_patches"] / g,
        "prefill_positions": r["rollout_prefill_positions"] / g,
        "llm_forward_calls_per_batch": r["rollout_forward_calls"] / (g / PROMPTS_PER_STEP),
    }
    return r


COUNTS = ("completions", "forward_calls", "prefill_calls", "prefill_positions", "vision_calls", "vision_patches",
          "rollout_groups", "rollout_prompt_len", "rollout_forward_calls", "rollout_prefill_calls",
          "rollout_prefill_positions", "rollout_vision_calls", "rollout_vision_patches", "per_group")  # fmt: skip


def ours_loss_images(runs: dict, g: int) -> str:
    """Images encoded per group in the loss forwards (all vision patches outside the rollouts), geovl vs TRL."""

    def per_group(r):
        return (r["vision_patches"] - r["rollout_vision_patches"]) / PATCHES_PER_IMAGE / r["rollout_groups"]

    return f"{per_group(runs[f'geovl_g{g}'][0]):g} vs {per_group(runs[f'trl_g{g}'][0]):g}"


def main() -> int:
    a = parse_args(__doc__.split("\n")[0], HERE / "results" / "grpo.json")
    if a.worker:
        return serve_worker(a, {"geovl": worker_geovl, "trl": worker_trl})
    size_name = "quick" if a.quick else "full"
    size = SIZES[size_name]

    def side(which: str, g: int, root: Path, model: Path, data: Path):
        return lambda i: _derive(run_worker(__file__, which, model, data, root / f"{which}-g{g}-{i}", {**size, "G": g}))

    def body(env: dict) -> dict:
        with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
            root = Path(tmp)
            model, data = build_inputs(root, size)
            sides = {f"{w}_g{g}": side(w, g, root, model, data) for g in GROUPS for w in ("geovl", "trl")}
            runs = interleave(sides, a.repeats)
        for name, rs in runs.items():
            if not all(r["steps"] == size["steps"] for r in rs):
                raise RuntimeError(f"{name} ran {[r['steps'] for r in rs]} steps, expected {size['steps']}")
        ratios, counts_g, behind = {}, {}, []
        for g in GROUPS:
            ours, peer = runs[f"geovl_g{g}"], runs[f"trl_g{g}"]
            ratios[f"completions_per_s_g{g}"] = ratio(
                ours, peer, "completions_per_s", f"geovl (share_prompts) completions/s over TRL's at G = {g}, per round",
                goal=1.5 if g == 8 else None,
            )  # fmt: skip
            ratios[f"peak_rss_g{g}"] = ratio(
                ours, peer, "peak_rss_mb", f"geovl peak RSS over TRL's at G = {g}, per round"
            )
            o, p = ours[0]["per_group"], peer[0]["per_group"]
            counts_g[f"G={g}"] = {
                "images_encoded_per_group": {"geovl": o["images_encoded"], "trl": p["images_encoded"],
                                             "ratio": o["images_encoded"] / p["images_encoded"]},
                "prefill_positions_per_group": {"geovl": o["prefill_positions"], "trl": p["prefill_positions"],
                                                "ratio": o["prefill_positions"] / p["prefill_positions"]},
                "padded_prompt_length_per_batch": ours[0]["rollout_prompt_len"],
                "rollout_llm_forwards_per_batch": {"geovl": o["llm_forward_calls_per_batch"],
                                                   "trl": p["llm_forward_calls_per_batch"]},
            }  # fmt: skip
            b = behind_note(ratios[f"completions_per_s_g{g}"], f"geovl share_prompts completions/s vs TRL's at G = {g}")
            if b:
                behind.append(b)
            if g == 8 and not ratios["completions_per_s_g8"]["goal_met_by_median"]:
                behind.append(
                    f"goal ≥ 1.5× completions/s at G = 8 not met: {fmt_ratio(ratios['completions_per_s_g8'])}"
                )
        keys = ("completions_per_s", "s_per_step", "train_runtime_s", "generate_share", "loss_forward_share", "backward_share",
                "other_share", "peak_rss_mb", "mean_completion_tokens")  # fmt: skip
        c4, c8 = counts_g["G=4"], counts_g["G=8"]
        return {
            "what": "shared-prompt GRPO rollouts: geovl train grpo share_prompts=true vs a plain TRL GRPOTrainer at G = 4 and "
            "G = 8 on 256-visual-token prompts, same tiny model / data / reward / settings, each run a fresh subprocess, "
            "sides interleaved",
            "size": size_name,
            "repeats": a.repeats,
            "order": "geovl G=4, trl G=4, geovl G=8, trl G=8 in every round",
            "settings": {
                "shared": {
                    "model": "tiny Qwen2.5-VL (hidden 128, 2 LLM layers, 2 vision blocks), 448 px images "
                    "(1,024 patches, 256 visual tokens per prompt)",
                    **size,
                    "num_generations": list(GROUPS),
                    "prompts_per_step": PROMPTS_PER_STEP,
                    "max_completion_length": MAX_COMPLETION,
                    "lr": LR,
                    "seed": SEED,
                    "beta": 0.0,
                    "temperature": 1.0,
                    "reward": "rs_reward (routed rules)",
                    "trained": "everything (full fine-tuning)",
                },
                "geovl": "geovl train grpo: share_prompts=true, tune_llm/vision/merger=full, tune_embeddings=true, "
                f"lr_scheduler=constant, min_pixels=max_pixels={PIXELS}",
                "trl": "GRPOTrainer: prompt + image columns, processor padding_side=left (pixel bounds of the model folder: "
                f"{PIXELS}), bf16=False, use_cpu=True, gradient_checkpointing=False, lr_scheduler_type=constant, "
                "dataloader_num_workers=0; vLLM (needs a GPU) and continuous batching (no images) not available here",
                "timers": "generation = _generate_and_score_completions; loss forward = compute_loss; backward = rest of "
                "training_step; other = train runtime minus those (optimizer, logging, data)",
            },  # fmt: skip
            "counts": {name: {k: rs[0][k] for k in COUNTS} for name, rs in runs.items()},
            "counts_per_group": counts_g,
            "counts_note": "rollout counts are taken inside TRL's _generate (prompt processing + sampling) on both sides; "
            "images encoded = vision patches / 1,024; prefill positions = batch × length of the multi-token LLM forwards "
            "(padding included). geovl prefills each distinct prompt without its last token (L − 1 positions) and runs "
            "every row's last prompt token in the first decoding step (one more single-token LLM forward per batch); the "
            "loss forward is TRL's on both sides (every row's image and prompt again, with gradients)",
            "counts_stable_across_rounds": {
                name: all(
                    exact_same(rs, k) for k in ("completions", "rollout_vision_patches", "rollout_prefill_positions")
                )
                for name, rs in runs.items()
            },  # fmt: skip
            "summary": {name: {k: spread([r[k] for r in rs], 4) for k in keys} for name, rs in runs.items()},
            "ratios": ratios,
            "behind": "; ".join(behind) or None,
            "runs": runs,
            "table": {
                "name": "GRPO shared-prompt rollouts (`bench_grpo.py`)",
                "baseline": "TRL `GRPOTrainer`, same settings, gradient checkpointing off (no faster CPU knob: vLLM needs a "
                "GPU, continuous batching passes no images); geovl with `share_prompts: true`",
                "counts": f"256 visual tokens per prompt; per group in the rollouts, images encoded "
                f"{c4['images_encoded_per_group']['geovl']:g} vs {c4['images_encoded_per_group']['trl']:g} (G=4), "
                f"{c8['images_encoded_per_group']['geovl']:g} vs {c8['images_encoded_per_group']['trl']:g} (G=8); prefill "
                f"positions {c4['prefill_positions_per_group']['geovl']:,.0f} vs {c4['prefill_positions_per_group']['trl']:,.0f} "
                f"(G=4), {c8['prefill_positions_per_group']['geovl']:,.0f} vs {c8['prefill_positions_per_group']['trl']:,.0f} "
                f"(G=8): geovl L − 1 vs G × L for padded prompt lengths L = "
                f"{'/'.join(map(str, c8['padded_prompt_length_per_batch']))}, + 1 token per row in the first decoding step; "
                f"loss forward: images encoded {ours_loss_images(runs, 8)} (same LLM work on both)",
                "ratios": [
                    ["completions/s G=4", "completions_per_s_g4"],
                    ["G=8 (goal ≥ 1.5×)", "completions_per_s_g8"],
                ],
            },  # fmt: skip
        }

    rc = finish(a.out, body, "grpo")
    if rc == 0:
        r = json.loads(a.out.read_text())
        for g in GROUPS:
            print(
                f"completions/s geovl share_prompts / TRL at G={g}: {fmt_ratio(r['ratios'][f'completions_per_s_g{g}'])}"
            )
        print(json.dumps(r["counts_per_group"], indent=1))
        if r["behind"]:
            print("BEHIND:", r["behind"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
