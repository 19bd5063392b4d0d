"""Benchmark: geovl SFT (length-grouped batches) vs TRL's SFTTrainer, side by side in one run.

Same tiny Qwen2.5-VL, same data (~64 samples, images of mixed sizes 256–1024 px), same LoRA
(LLM adapters + trainable merger), batch size, learning rate, seed and number of steps. TRL is
configured as peers use it on a CPU (NOTES §3): ``max_length=None`` (its default 1024 would cut image
tokens), ``bf16=False`` with ``use_cpu=True``, ``assistant_only_loss=True`` (same loss as ours); it
refuses packing / padding-free for vision data (recorded below). Each trainer runs in its own
subprocess; measured there:

- share of padding tokens in the LLM input (attention-mask zeros over all positions),
- real (non-padding) tokens per second of training (the Trainer's ``train_runtime``) and the ratio,
- peak resident memory (RSS) of the process,
- steps run.

    python bench/bench_sft.py            # writes bench/results/sft.json and prints a table

Wall time varies a lot on shared machines (NOTES §6): compare the two columns of one run, not runs.
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
N_SAMPLES = 64
BATCH = 4
STEPS = N_SAMPLES // BATCH  # one epoch each
SIDES = (256, 384, 512, 640, 768, 896, 1024)
MAX_PIXELS = 1024 * 1024
LR = 1e-4
SEED = 0
LORA = dict(r=16, alpha=32, dropout=0.0)


# -- data and model -----------------------------------------------------------------------------


def _image(w: int, h: int, rng) -> bytes:
    """A smooth random scene (compresses like imagery, unlike noise) as JPEG bytes."""
    import numpy as np
    from PIL import Image

    small = rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    b = io.BytesIO()
    img.save(b, "JPEG", quality=85)
    return b.getvalue()


def build_inputs(root: Path) -> tuple[Path, Path]:
    import numpy as np

    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.models.tiny import build_tiny

    model = build_tiny("qwen2.5-vl", root / "model", hidden=128, layers=4, max_pixels=MAX_PIXELS)
    rng = np.random.default_rng(SEED)
    qa = [("Is there water in this scene?", "yes"), ("图中有森林吗？", "没有"), ("How many buildings are there?", "3"), ("这是什么地类？", "耕地")]
    data = root / "bench.parquet"
    with DatasetWriter(data) as w:
        for i in range(N_SAMPLES):
            w.read_one()
            q, a = qa[i % len(qa)]
            img = _image(int(rng.choice(SIDES)), int(rng.choice(SIDES)), rng)
            w.write(make_sample(f"b{i}", q, a, [img], qtype="open", source=f"bench#{i}"))
    return model, data


# -- the two workers (each runs in its own subprocess) -----------------------------------------


def worker_geovl(model: Path, data: Path, out: Path) -> dict:
    from geovl.cli import main

    recipe = out.with_suffix(".yaml")
    recipe.write_text("{}\n")
    t0 = time.time()
    rc = main([
        "train", "sft", str(recipe), f"model={model}", f"train_data={data}", f"output_dir={out}",
        f"max_steps={STEPS}", f"batch_size={BATCH}", f"lr={LR}", f"seed={SEED}", "warmup_ratio=0",
        "tune_llm=lora", "tune_vision=freeze", "tune_merger=full", f"lora_r={LORA['r']}", f"lora_alpha={LORA['alpha']}",
        f"lora_dropout={LORA['dropout']}", "group_by_length=true", "report_to=[]", "progress_bar=false",
        "logging_steps=1", f"save_steps={10 * STEPS}", "num_workers=0",
    ])  # fmt: skip
    if rc != 0:
        raise SystemExit(f"geovl train sft failed with exit code {rc}")
    s = json.loads((out / "train_summary.json").read_text())
    return {
        "steps": s["steps"],
        "real_tokens": s["real_tokens"],
        "padded_tokens": s["padded_tokens"],
        "train_runtime_s": s["train_runtime_s"],
        "wall_s": round(time.time() - t0, 2),
        "train_loss": s["train_loss"],
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_trl(model: Path, data: Path, out: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from geovl.data.io import read_samples
    from geovl.models.registry import get_family

    t0 = time.time()
    rows = []
    for s in read_samples(data):  # the same samples, as the usual messages + PIL images columns
        msgs = [{"role": m["role"], "content": [dict(p) for p in m["content"]]} for m in s["messages"]]
        rows.append({"messages": msgs, "images": [Image.open(io.BytesIO(b)).convert("RGB") for b in s["images"]]})
    ds = datasets.Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(model)
    m = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    fam = get_family(m.config)
    peft_config = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=fam.lora_targets(("llm",)),
        modules_to_save=["model.visual.merger"], task_type="CAUSAL_LM",
    )  # fmt: skip
    counts = {"real": 0, "padded": 0}

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            if model.training:
                counts["real"] += int(inputs["attention_mask"].sum())
                counts["padded"] += int(inputs["attention_mask"].numel())
            return super().compute_loss(model, inputs, *a, **k)

    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR, seed=SEED,
        warmup_steps=0, lr_scheduler_type="cosine", max_length=None, bf16=False, use_cpu=True, assistant_only_loss=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = CountingSFTTrainer(model=m, args=args, train_dataset=ds, processing_class=processor, peft_config=peft_config)
    result = trainer.train()
    refused = None
    try:  # what peers cannot do: pack vision samples to remove padding
        SFTTrainer(model=trainer.model, args=SFTConfig(output_dir=str(out / "p"), packing=True, max_length=None, bf16=False, use_cpu=True, report_to=[]), train_dataset=ds, processing_class=processor)
    except ValueError as e:
        refused = str(e)
    return {
        "steps": trainer.state.global_step,
        "real_tokens": counts["real"],
        "padded_tokens": counts["padded"],
        "train_runtime_s": round(result.metrics["train_runtime"], 3),
        "wall_s": round(time.time() - t0, 2),
        "train_loss": result.training_loss,
        "peak_rss_mb": peak_rss_mb(),
        "packing_refused": refused,
    }


# -- driver ---------------------------------------------------------------------------------------


def _derive(r: dict) -> dict:
    r["padding_share"] = round(1 - r["real_tokens"] / max(r["padded_tokens"], 1), 4)
    r["real_tokens_per_s"] = round(r["real_tokens"] / r["train_runtime_s"], 1)
    return r


def main() -> int:
    a = parse_args(__doc__.split("\n")[0], HERE / "results" / "sft.json")
    if a.worker:
        return serve_worker(a, {"geovl": worker_geovl, "trl": worker_trl})

    import torch
    import transformers
    import trl

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        root = Path(tmp)
        model, data = build_inputs(root)
        ours = _derive(run_worker(__file__, "geovl", model, data, root / "geovl"))
        peer = _derive(run_worker(__file__, "trl", model, data, root / "trl"))
    result = {
        "what": "geovl SFT (group_by_length) vs TRL SFTTrainer, same tiny Qwen2.5-VL / data / LoRA / steps, each in a subprocess",
        "setup": {
            "model": "tiny Qwen2.5-VL (hidden 128, 4 LLM layers, 2 vision blocks), max_pixels 1024x1024",
            "samples": N_SAMPLES, "image_sides_px": list(SIDES), "batch_size": BATCH, "steps": STEPS, "lr": LR, "seed": SEED,
            "lora": LORA, "trained": "LoRA on LLM linears + full merger (modules_to_save)",
            "trl_config": "max_length=None, bf16=False, use_cpu=True, assistant_only_loss=True, gradient_checkpointing=False",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "geovl": ours,
        "trl": {k: v for k, v in peer.items() if k != "packing_refused"},
        "trl_packing_refused": peer.get("packing_refused"),
        "ratios": {
            "real_tokens_per_s_geovl_over_trl": round(ours["real_tokens_per_s"] / peer["real_tokens_per_s"], 3),
            "padding_share_geovl": ours["padding_share"],
            "padding_share_trl": peer["padding_share"],
            "peak_rss_geovl_over_trl": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        },
        "goals": {"padding_share_geovl_max": 0.05, "tokens_per_s_ratio_min": 1.3},
        "date": time.strftime("%Y-%m-%d"),
    }
    result["goals_met"] = {
        "padding": ours["padding_share"] <= 0.05,
        "speed": result["ratios"]["real_tokens_per_s_geovl_over_trl"] >= 1.3,
        "same_steps": ours["steps"] == peer["steps"] == STEPS,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    rows = [
        ("steps", "steps", "{}"),
        ("real (non-padding) tokens", "real_tokens", "{:,}"),
        ("LLM positions incl. padding", "padded_tokens", "{:,}"),
        ("padding share", "padding_share", "{:.1%}"),
        ("train time (s)", "train_runtime_s", "{:.2f}"),
        ("real tokens / s", "real_tokens_per_s", "{:,.0f}"),
        ("wall incl. loading (s)", "wall_s", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:,.0f}"),
        ("train loss", "train_loss", "{:.3f}"),
    ]
    print(f"{'':30}{'geovl':>14}{'TRL SFTTrainer':>16}")
    for label, key, fmt in rows:
        print(f"{label:30}{fmt.format(ours[key]):>14}{fmt.format(peer[key]):>16}")
    r = result["ratios"]
    print(f"\nreal tokens/s ratio geovl/TRL: {r['real_tokens_per_s_geovl_over_trl']:.2f}x (goal >= 1.3x); "
          f"padding {ours['padding_share']:.1%} vs {peer['padding_share']:.1%} (goal <= 5%)")  # fmt: skip
    print(f"TRL packing for vision data: {'refused: ' + result['trl_packing_refused'] if result['trl_packing_refused'] else 'accepted'}")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
