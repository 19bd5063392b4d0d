"""Measure one training step's activation memory on CPU and compare it with geovl.models.memory's estimate.

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 python scripts/measure_memory.py \
        --family qwen2.5-vl --hidden 512 --layers 8 [--gradient-checkpointing] [--tune-vision lora] [--json]

Builds a tiny model of the given size, sets it up for LoRA training as ``geovl train`` does, and runs one
forward + backward on a batch of 2 image+text samples (float32). Two measurements:

- bytes of every tensor autograd keeps for backward (``saved_tensors_hooks``, distinct storages, parameters
  excluded) against the estimate's kept activations (LLM + logits + vision);
- the peak of live tensor bytes during forward + backward (allocation and free events from torch's profiler,
  a second identical step with gradients cleared) against the estimate's activations + transient + gradients:
  what a GPU's caching allocator would have to hold;
- the process's peak RSS during forward + backward (VmHWM reset just before) against the same estimate, for
  information: glibc keeps freed small blocks in its heap (the two MALLOC_ variables make it return them) and
  first-touched library pages count, so it varies by a few MiB from one machine to the next.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile


def _allocator_peak(step) -> int:
    """Peak bytes of live tensors (above those alive before) while ``step()`` runs, from the allocation and
    free events torch's profiler records: what a GPU's caching allocator would have to hold, free of the
    glibc heap and shared-library pages that make RSS vary from one machine to the next."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(
    family: str, hidden: int, layers: int, gradient_checkpointing: bool, tune_vision: str, batch: int = 2
) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from geovl.models import memory as M
    from geovl.models.tiny import build_tiny
    from geovl.train.model_setup import load_model_and_processor, setup_trainable
    from geovl.train.recipe import SFTRecipe

    torch.manual_seed(0)
    folder = build_tiny(family, tempfile.mkdtemp(prefix="geovl-mem-") + "/m", hidden=hidden, layers=layers, seed=0)
    model, proc, fam = load_model_and_processor(str(folder), precision="fp32")
    recipe = SFTRecipe(
        model=str(folder), train_data=["-"], tune_vision=tune_vision, gradient_checkpointing=gradient_checkpointing
    )
    if gradient_checkpointing:
        model.config.use_cache = False
    model, _ = setup_trainable(model, fam, recipe)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    rng = np.random.default_rng(0)
    msgs = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.fromarray(rng.integers(0, 255, (224, 280, 3), dtype=np.uint8))},
                    {"type": "text", "text": "Is there water in this image? " * 20},
                ],
            }
        ]
        for _ in range(batch)
    ]
    enc = proc.apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", padding=True
    )
    enc["labels"] = enc["input_ids"].clone()
    seq, patches = int(enc["input_ids"].shape[1]), int(enc["image_grid_thw"].prod(-1).sum())

    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**enc)
    kept = sum(v for k, v in saved.items() if k not in params)
    del out
    saved.clear()
    gc.collect()

    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    model(**enc).loss.backward()
    peak = _status("VmHWM") - base
    for p in model.parameters():
        p.grad = None
    gc.collect()
    alloc_peak = _allocator_peak(lambda: model(**enc).loss.backward())

    dims = M.model_dims(folder)
    plan = M.Plan(
        batch_size=batch,
        dtype="fp32",
        gradient_checkpointing=gradient_checkpointing,
        tune_vision=tune_vision,
        lora_dropout=recipe.lora_dropout,
        lora_r=recipe.lora_r,
    )
    e = M.activation_bytes(dims, plan, seq, patches)
    grads = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    est_kept = e["llm"] + e["logits"] + e["vision"]
    est_peak = est_kept + e["transient"] + grads
    return {
        "family": fam.key,
        "hidden": hidden,
        "layers": layers,
        "gradient_checkpointing": gradient_checkpointing,
        "tune_vision": tune_vision,
        "batch": batch,
        "seq_len": seq,
        "patches": patches,
        "kept_measured": kept,
        "kept_estimate": est_kept,
        "kept_ratio": round(est_kept / kept, 3),
        "peak_measured": peak,
        "peak_estimate": est_peak,
        "peak_ratio": round(est_peak / peak, 3),
        "alloc_peak_measured": alloc_peak,
        "alloc_peak_ratio": round(est_peak / alloc_peak, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2.5-vl")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--tune-vision", default="freeze", choices=["freeze", "lora", "full"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = measure(a.family, a.hidden, a.layers, a.gradient_checkpointing, a.tune_vision)
    if a.json:
        print(json.dumps(r))
    else:
        mib = 2**20
        print(
            f"{r['family']} H={r['hidden']} L={r['layers']} gc={r['gradient_checkpointing']} vision={r['tune_vision']} "
            f"batch {r['batch']}×{r['seq_len']} tokens, {r['patches']} patches"
        )
        print(
            f"  kept for backward: measured {r['kept_measured'] / mib:.2f} MiB, estimate {r['kept_estimate'] / mib:.2f} MiB, "
            f"ratio {r['kept_ratio']}"
        )
        print(
            f"  peak RSS of forward+backward: measured {r['peak_measured'] / mib:.2f} MiB, estimate {r['peak_estimate'] / mib:.2f} MiB, "
            f"ratio {r['peak_ratio']}"
        )
        print(
            f"  peak live tensors of forward+backward: measured {r['alloc_peak_measured'] / mib:.2f} MiB, "
            f"estimate {r['peak_estimate'] / mib:.2f} MiB, ratio {r['alloc_peak_ratio']}"
        )


if __name__ == "__main__":
    main()
