"""Training memory estimate for one batch: weights, gradients and optimizer states, activations kept for the
backward pass, logits, from a model's config and a training plan (batch size, precision, gradient checkpointing,
what trains, quantization). The formula and its check against a measured run are in docs/memory-guard.md.

Per token (LLM) or per patch (vision tower), the tensors a Qwen-VL layer keeps for backward, in elements:

- LLM decoder layer: two RMSNorms (float32 input + output: ``2·H·(4+b)`` bytes), attention ``3·H + 2·Hkv``
  (rotated q and k, v, the attention output) and the SwiGLU MLP ``4·I`` (gate, up, act, product), in the
  activation dtype of ``b`` bytes; ``H`` hidden size, ``Hkv`` = key/value heads × head dim, ``I`` intermediate
  size. LoRA with dropout adds each target's dropped-out input: ``(6·H + I)·(b+1)``. With gradient
  checkpointing only each layer's input ``H`` stays, plus one layer's full set while it is recomputed.
- vision block: ``12·Hv + m·Iv`` with ``m`` 4 for a SwiGLU MLP (Qwen2.5-VL) and 2 for fc1/act/fc2
  (Qwen2-VL, Qwen3-VL); the merger ``4·Hv`` per patch. A frozen vision tower keeps nothing (no graph) but
  needs one block's worth while it runs.
- logits: the loss keeps a float32 log-softmax (``4·V`` bytes per token); while it runs the logits, their float32
  copy and the shifted copy are alive too (``(b+8)·V``, transient).

All of it scales with the padded batch: ``batch_size × longest sequence`` tokens and the batch's patches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GeoVLError

GiB = 1024**3
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CUDA_RESERVE = 1 * GiB  # CUDA context, cuBLAS workspace and allocator slack: not usable by the run


class MemoryEstimateError(GeoVLError, ValueError):
    """A memory size or model config the estimate cannot use."""


def parse_size(text: str | int | float) -> int:
    """``24GiB`` / ``24G`` (binary), ``24GB`` (decimal), ``80000000000`` (bytes) → bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise MemoryEstimateError(f"memory size must be positive, got {text}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise MemoryEstimateError(f"{text!r} is not a memory size; write e.g. 24GiB, 80GB or 16G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class ModelDims:
    family: str
    hidden: int
    layers: int
    kv_dim: int  # key/value heads × head dim
    intermediate: int
    vocab: int
    v_hidden: int
    v_layers: int
    v_intermediate: int
    v_mlp_tensors: int  # 4: SwiGLU (gate, up, act, product); 2: fc1 output and its activation
    merge: int  # spatial merge size: patches per visual token = merge²
    qk_norm: bool = False  # Qwen3: RMSNorm on each head's q and k
    params: dict = field(default_factory=dict)  # part → parameter count (vision, merger, llm, embed, lm_head, other)
    llm_linear: int = 0  # parameters in the LLM's linear layers (what 4bit/8bit quantize)
    lora_per_rank: dict = field(default_factory=dict)  # part → LoRA parameters per unit of rank (Σ in+out)


def model_dims(model: str | Path) -> ModelDims:
    """Dimensions and parameter counts of a model folder, from its config alone (the model is built on the meta
    device: no weights are read, so a 72B config costs nothing)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from .registry import get_family

    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise MemoryEstimateError(f"{folder}: not a model folder (no config.json)")
    try:
        cfg = AutoConfig.from_pretrained(str(folder))
        fam = get_family(cfg)
    except Exception as e:  # noqa: BLE001 - OSError, JSON errors, transformers' config validation errors
        raise MemoryEstimateError(
            f"{folder / 'config.json'}: cannot read the model config ({str(e).strip().splitlines()[-1][:300]})"
        ) from e
    t, v = cfg.text_config, cfg.vision_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    kv = (getattr(t, "num_key_value_heads", None) or t.num_attention_heads) * head_dim
    if fam.key == "qwen2_vl":
        v_hidden, v_inter, v_mlp = v.embed_dim, int(v.embed_dim * v.mlp_ratio), 2
    else:
        v_hidden, v_inter, v_mlp = v.hidden_size, v.intermediate_size, 4 if fam.key == "qwen2_5_vl" else 2
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():  # shapes only: no weights, no initialisation
        m = AutoModelForImageTextToText.from_config(cfg)
    params: dict[str, int] = {}
    seen = set()
    for n, p in m.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params[fam.part_of(n)] = params.get(fam.part_of(n), 0) + p.numel()
    llm_linear = 0
    lora: dict[str, int] = {"llm": 0, "vision": 0}
    targets = {part: re.compile(fam.lora_targets((part,))) for part in lora}
    for n, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            if n.startswith(fam.llm_prefix + "."):
                llm_linear += mod.weight.numel()
            for part, rx in targets.items():
                if rx.fullmatch(n):
                    lora[part] += mod.in_features + mod.out_features
    return ModelDims(
        fam.key,
        t.hidden_size,
        t.num_hidden_layers,
        kv,
        t.intermediate_size,
        t.vocab_size,
        v_hidden,
        v.depth,
        v_inter,
        v_mlp,
        v.spatial_merge_size,
        fam.key == "qwen3_vl",
        params,
        llm_linear,
        lora,
    )


@dataclass(frozen=True)
class Plan:
    """What a training run does that decides its memory (read from an SFT or GRPO recipe by :func:`plan_from`)."""

    batch_size: int = 4  # the SFT recipe's defaults
    dtype: str = "bf16"  # fp32 | bf16 | fp16: weights and activations
    gradient_checkpointing: bool = False
    tune_llm: str = "lora"
    tune_vision: str = "freeze"
    tune_merger: str = "full"
    tune_embeddings: bool = False
    lora_r: int = 16
    lora_dropout: float = 0.05
    quantization: str = "none"


def plan_from(recipe, device: str = "cuda") -> Plan:
    """A :class:`Plan` from any recipe object with the usual geovl keys. ``precision=auto`` is bf16 on a GPU
    (``device='cuda'``, what the estimate is for) and fp32 on a CPU."""
    g = lambda k, d: getattr(recipe, k, d)  # noqa: E731
    prec = g("precision", "auto")
    dtype = ("bf16" if device == "cuda" else "fp32") if prec == "auto" else prec
    return Plan(
        int(g("batch_size", 1)),
        dtype,
        bool(g("gradient_checkpointing", False)),
        g("tune_llm", "lora"),
        g("tune_vision", "freeze"),
        g("tune_merger", "full"),
        bool(g("tune_embeddings", False)),
        int(g("lora_r", 16)),
        float(g("lora_dropout", 0.05)),
        g("quantization", "none"),
    )


def static_bytes(d: ModelDims, plan: Plan) -> dict:
    """Weights, plus gradients and AdamW's two states for what trains (same dtype as the weights)."""
    b = DTYPE_BYTES[plan.dtype]
    total = sum(d.params.values())
    if plan.quantization in (
        "4bit",
        "8bit",
    ):  # the LLM's linear layers at 0.5 / 1 byte (+ nf4 block scales ≈ 1/64 byte)
        q = 0.5 + 1 / 64 if plan.quantization == "4bit" else 1.0
        weights = (total - d.llm_linear) * b + d.llm_linear * q
    else:
        weights = total * b
    modes = {"llm": plan.tune_llm, "vision": plan.tune_vision, "merger": plan.tune_merger}
    trainable = 0
    for part, mode in modes.items():
        if mode == "full":
            trainable += d.params.get(part, 0)
        elif mode == "lora":
            trainable += plan.lora_r * d.lora_per_rank.get(part, 0)
    if plan.tune_embeddings:
        trainable += d.params.get("embed", 0) + d.params.get("lm_head", 0)
    lora_any = "lora" in (plan.tune_llm, plan.tune_vision)
    # peft keeps a frozen copy of each fully trained module (modules_to_save) next to the trained one
    copies = (
        (trainable - sum(plan.lora_r * d.lora_per_rank.get(p, 0) for p, m in modes.items() if m == "lora"))
        if lora_any
        else 0
    )
    return {
        "weights": int(weights + copies * b),
        "grads_and_optimizer": int(trainable * b * 3),
        "trainable_params": int(trainable),
    }


def activation_bytes(d: ModelDims, plan: Plan, seq_len: int, patches: int) -> dict:
    """Activations for one batch of ``plan.batch_size`` sequences padded to ``seq_len`` holding ``patches`` vision
    patches in all (before the 2×2 merge): what is kept for backward (``llm``, ``logits``, ``vision``) and the
    largest short-lived peak on top of it (``transient``)."""
    b = DTYPE_BYTES[plan.dtype]
    tokens = plan.batch_size * seq_len
    # RMSNorm keeps its float32 input and its output in the activation dtype: 2 norms per layer
    layer = 2 * d.hidden * (4 + b) + (3 * d.hidden + 2 * d.kv_dim + 4 * d.intermediate) * b
    if d.qk_norm:
        layer += (d.hidden + d.kv_dim) * (4 + b)
    if plan.tune_llm == "lora" and plan.lora_dropout > 0:
        # each of the 7 LoRA targets keeps its own dropped-out input (+ a 1-byte mask) and lora_A's output
        layer += (6 * d.hidden + d.intermediate) * (b + 1) + 7 * plan.lora_r * b
    if plan.gradient_checkpointing:  # each layer's input, and one layer's full set while it is recomputed
        llm = tokens * (d.layers * d.hidden * b + layer)
    else:
        llm = tokens * (d.layers * layer + d.hidden * b)
    logits_saved = tokens * d.vocab * 4  # the float32 log-softmax the loss keeps
    logits_transient = (
        tokens * d.vocab * (b + 8)
    )  # logits, their float32 copy and the shifted copy, while the loss runs
    v_block = (12 * d.v_hidden + d.v_mlp_tensors * d.v_intermediate) * b
    if plan.tune_vision == "lora" and plan.lora_dropout > 0:
        v_in = 2 * d.v_hidden + (
            2 * d.v_hidden + d.v_intermediate if d.v_mlp_tensors == 4 else d.v_hidden + d.v_intermediate
        )
        v_block += v_in * (b + 1)
    if plan.tune_vision != "freeze":
        vision = patches * (
            d.v_layers * d.v_hidden * b + v_block if plan.gradient_checkpointing else d.v_layers * v_block
        )
    else:
        vision = 0
    if plan.tune_merger == "full" or plan.tune_vision != "freeze":
        vision += patches * 4 * d.v_hidden * b
    vision_transient = patches * v_block if plan.tune_vision == "freeze" else 0  # a frozen tower: one block at a time
    return {
        "llm": int(llm),
        "logits": int(logits_saved),
        "vision": int(vision),
        "transient": int(max(logits_transient, vision_transient)),
    }


def estimate(d: ModelDims, plan: Plan, seq_len: int, patches: int) -> dict:
    """Every part in bytes and their ``total`` (the peak of one training step on this batch)."""
    out = {**static_bytes(d, plan), **activation_bytes(d, plan, seq_len, patches)}
    out["total"] = (
        out["weights"] + out["grads_and_optimizer"] + out["llm"] + out["logits"] + out["vision"] + out["transient"]
    )
    return out


def usable(gpu_memory: int) -> int:
    """What a run may use of a GPU of ``gpu_memory`` bytes (less the CUDA context reserve)."""
    return max(gpu_memory - CUDA_RESERVE, 0)


def check_batches(d: ModelDims, plan: Plan, samples: list[tuple[str, int, int]], gpu_memory: int) -> dict:
    """``samples``: (id, sequence tokens, vision patches) per sample.

    Each sample is rated as a batch of ``batch_size`` like it (length grouping puts similar lengths together);
    the batches are the samples sorted by length, ``batch_size`` at a time, padded to their longest — the
    worst batch length grouping can form. Returns a report with the samples and batches over the usable memory."""
    limit = usable(gpu_memory)
    over_samples = []
    worst_sample = None
    for sid, seq, patches in samples:
        est = estimate(d, plan, seq, patches * plan.batch_size)["total"]
        if worst_sample is None or est > worst_sample[1]:
            worst_sample = (sid, est, seq)
        if est > limit:
            over_samples.append({"id": sid, "tokens": seq, "patches": patches, "bytes": est})
    order = sorted(samples, key=lambda s: s[1], reverse=True)
    batches = []
    for i in range(0, len(order), plan.batch_size):
        chunk = order[i : i + plan.batch_size]
        seq = max(s[1] for s in chunk)
        patches = sum(s[2] for s in chunk)
        batches.append(([s[0] for s in chunk], seq, patches, estimate(d, plan, seq, patches)))
    worst = max(batches, key=lambda x: x[3]["total"]) if batches else None
    over_batches = [
        {"ids": ids, "tokens": seq, "patches": p, "bytes": e["total"]}
        for ids, seq, p, e in batches
        if e["total"] > limit
    ]
    report = {
        "gpu_memory": gpu_memory,
        "usable": limit,
        "plan": plan.__dict__,
        "static": static_bytes(d, plan),
        "samples_over": len(over_samples),
        "samples_over_list": over_samples[:20],
        "batches": len(batches),
        "batches_over": len(over_batches),
        "batches_over_list": over_batches[:20],
    }
    if worst is not None:
        report["longest_batch"] = {"ids": worst[0], "tokens": worst[1], "patches": worst[2], **worst[3]}
    return report


def format_check(r: dict) -> str:
    p = r["plan"]
    lines = [
        f"memory (batch_size {p['batch_size']}, {p['dtype']}, gradient checkpointing {'on' if p['gradient_checkpointing'] else 'off'}, "
        f"quantization {p['quantization']}): GPU {fmt_bytes(r['gpu_memory'])}, usable {fmt_bytes(r['usable'])} "
        f"(less {fmt_bytes(CUDA_RESERVE)} for the CUDA context)",
        f"  weights {fmt_bytes(r['static']['weights'])}, gradients + AdamW states {fmt_bytes(r['static']['grads_and_optimizer'])}",
    ]
    lb = r.get("longest_batch")
    if lb:
        lines.append(
            f"  worst batch ({lb['tokens']} tokens × {p['batch_size']}, {lb['patches']} patches): {fmt_bytes(lb['total'])} = "
            f"LLM activations {fmt_bytes(lb['llm'])} + logits {fmt_bytes(lb['logits'])} + vision {fmt_bytes(lb['vision'])} "
            f"+ transient {fmt_bytes(lb['transient'])} + static"
        )
    lines.append(f"  samples that would not fit (as a batch of {p['batch_size']} like them): {r['samples_over']}")
    for s in r["samples_over_list"][:5]:
        lines.append(f"    {s['id']}: {s['tokens']} tokens, {s['patches']} patches → {fmt_bytes(s['bytes'])}")
    lines.append(f"  batches that would not fit: {r['batches_over']} of {r['batches']}")
    return "\n".join(lines)


class WouldNotFit(GeoVLError, ValueError):
    """The recipe's longest batch would not fit the GPU memory it names."""


def refuse_if_over(r: dict, where: str) -> None:
    lb = r.get("longest_batch")
    if lb and lb["total"] > r["usable"]:
        p = r["plan"]
        raise WouldNotFit(
            f"{where}: the longest batch would need about {fmt_bytes(lb['total'])} but gpu_memory={fmt_bytes(r['gpu_memory'])} leaves "
            f"{fmt_bytes(r['usable'])} ({lb['tokens']} tokens × batch_size {p['batch_size']}, {lb['patches']} vision patches; "
            f"{r['batches_over']} of {r['batches']} batches and {r['samples_over']} samples over). "
            "Lower batch_size (raise grad_accum), set gradient_checkpointing=true, lower max_pixels or set max_visual_tokens / "
            "max_length; `geovl data inspect DATA --model M --recipe R --gpu-memory SIZE` lists the samples."
        )


def image_patches(family, images: list[bytes], min_pixels: int | None, max_pixels: int | None) -> int:
    """Vision patches (before the merge) of a sample's stored images, from their headers; an unreadable image
    counts 0 (training drops such a sample with its reason)."""
    import io

    from PIL import Image

    n = 0
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as im:  # the header only
                w, h = im.size
        except Exception:  # noqa: BLE001 - any undecodable header
            continue
        n += family.image_tokens(h, w, min_pixels, max_pixels) * family.merge_size**2
    return n


def guard_training(recipe, family, dataset, min_pixels: int | None, max_pixels: int | None) -> dict | None:
    """With ``gpu_memory`` in the recipe: refuse (:class:`WouldNotFit`) when the longest batch of ``dataset`` (an
    SFT dataset: ``ids``, ``lengths``, ``sample(i)``) would not fit; returns the check report (None without it)."""
    size = getattr(recipe, "gpu_memory", None)
    if not size:
        return None
    gpu = parse_size(size)
    videos = getattr(dataset, "video_tokens", None) or [0] * len(dataset)  # counted by the dataset's pre-pass
    rows = [
        (
            dataset.ids[i],
            dataset.lengths[i],
            image_patches(family, dataset.sample(i).get("images") or [], min_pixels, max_pixels)
            + videos[i] * family.merge_size**2,
        )
        for i in range(len(dataset))
    ]
    report = check_batches(model_dims(recipe.model), plan_from(recipe), rows, gpu)
    refuse_if_over(report, f"gpu_memory={size}")
    return report
