"""Load a Qwen-VL model for training and decide what trains, from the model registry.

- ``tune_llm`` / ``tune_vision``: ``lora`` | ``full`` | ``freeze``; ``tune_merger``: ``full`` | ``freeze``.
- LoRA targets are the registry's anchored regexes for the chosen towers (never bare names).
- With any LoRA, fully trained parts become peft ``modules_to_save`` (saved inside the adapter,
  restored by ``PeftModel.from_pretrained``); without LoRA the model itself is trained.
- Parameters are grouped by part (vision / merger / llm) so each part can have its own lr.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch

from ..errors import GeoVLError
from ..models.registry import Family, get_family


class ModelSetupError(GeoVLError, ValueError):
    pass


def check_quantization(quantization: str) -> None:
    """Refuse 4bit/8bit (QLoRA) where it cannot run: no CUDA device or no bitsandbytes."""
    if quantization == "none":
        return
    if not torch.cuda.is_available():
        raise ModelSetupError(
            f"quantization={quantization} (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no CUDA device. "
            "Use quantization=none here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelSetupError("quantization needs bitsandbytes: pip install bitsandbytes") from None


def _quantization_config(quantization: str):
    check_quantization(quantization)
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def resolve_dtype(precision: str) -> torch.dtype:
    if precision == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def top_level_matches(model, pattern: str) -> list[str]:
    """Names of modules fully matching ``pattern`` (not their children)."""
    rx = re.compile(pattern)
    return [n for n, _ in model.named_modules() if rx.fullmatch(n)]


def llm_body_modules(model, family: Family) -> list[str]:
    """The LLM's decoder layers and final norm (not the embeddings: those follow ``tune_embeddings``),
    as module names — what ``tune_llm=full`` trains, with or without LoRA elsewhere."""
    names = top_level_matches(model, family.llm_layers)
    prefix = family.llm_prefix + "."
    emb = re.compile(family.embed_tokens)
    for n, mod in model.named_modules():
        if not n.startswith(prefix) or n.count(".") != family.llm_prefix.count(".") + 1:
            continue
        if n.rsplit(".", 1)[1] == "layers" or emb.fullmatch(n) or not any(True for _ in mod.parameters()):
            continue
        names.append(n)
    return names


def setup_trainable(model, family: Family, recipe) -> tuple[torch.nn.Module, list[str]]:
    """Apply freezing / LoRA / full training. Returns (model, modules_to_save)."""
    lora_parts = tuple(p for p, mode in (("llm", recipe.tune_llm), ("vision", recipe.tune_vision)) if mode == "lora")
    full_parts = {p for p, mode in (("llm", recipe.tune_llm), ("vision", recipe.tune_vision), ("merger", recipe.tune_merger)) if mode == "full"}
    if recipe.tune_embeddings:
        full_parts |= {"embed", "lm_head"}
    if not lora_parts and not full_parts:
        raise ModelSetupError("nothing would train: set tune_llm, tune_vision or tune_merger to lora/full")

    for p in model.parameters():
        p.requires_grad_(False)

    if not lora_parts:
        for n, p in model.named_parameters():
            if family.part_of(n) in full_parts:
                p.requires_grad_(True)
        return model, []

    from peft import LoraConfig, get_peft_model

    modules_to_save: list[str] = []
    if "merger" in full_parts:
        modules_to_save += top_level_matches(model, family.merger)
    if "embed" in full_parts:
        modules_to_save += top_level_matches(model, family.embed_tokens) + top_level_matches(model, family.lm_head)
    if "llm" in full_parts:
        modules_to_save += llm_body_modules(model, family)
    if "vision" in full_parts:
        modules_to_save += top_level_matches(model, family.vision_blocks) + top_level_matches(model, family.vision_embed)
    cfg = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        use_dora=recipe.use_dora,
        target_modules=family.lora_targets(lora_parts),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
        # a tied-embedding base (Qwen2.5-VL-3B): train embed_tokens and lm_head as one matrix, as the base has
        ensure_weight_tying="embed" in full_parts and _ties_embeddings(model),
    )
    model = get_peft_model(model, cfg)
    return model, modules_to_save


def _ties_embeddings(model) -> bool:
    cfgs = [model.config, getattr(model.config, "text_config", None)]
    return any(getattr(c, "tie_word_embeddings", False) for c in cfgs if c is not None)


def part_of_param(family: Family, name: str) -> str:
    n = name.replace("base_model.model.", "", 1)
    return family.part_of(n)


def trainable_table(model, family: Family) -> "OrderedDict[str, tuple[int, int]]":
    """part → (trainable params, total params)."""
    out: OrderedDict[str, list[int]] = OrderedDict((k, [0, 0]) for k in ("spectral", "vision", "merger", "llm", "embed", "lm_head", "other"))
    seen = set()
    for n, p in model.named_parameters():
        if id(p) in seen or ".original_module." in n:  # peft keeps a frozen copy of modules_to_save
            continue
        seen.add(id(p))
        part = part_of_param(family, n)
        out[part][1] += p.numel()
        if p.requires_grad:
            out[part][0] += p.numel()
    return OrderedDict((k, (v[0], v[1])) for k, v in out.items() if v[1])


def format_trainable(table) -> str:
    lines = ["trainable parameters per part:"]
    tt = ta = 0
    for part, (t, a) in table.items():
        tt += t
        ta += a
        lines.append(f"  {part:<8} {t:>14,} / {a:>14,}  ({100 * t / max(a, 1):5.1f} %)")
    lines.append(f"  {'total':<8} {tt:>14,} / {ta:>14,}  ({100 * tt / max(ta, 1):5.1f} %)")
    return "\n".join(lines)


def param_groups(model, family: Family, recipe) -> list[dict]:
    """Optimizer parameter groups: per part (own lr) × (decay / no decay)."""
    lrs = {
        "vision": recipe.lr_vision if recipe.lr_vision is not None else recipe.lr,
        "merger": recipe.lr_merger if recipe.lr_merger is not None else recipe.lr,
        "llm": recipe.lr_llm if recipe.lr_llm is not None else recipe.lr,
        "spectral": recipe.lr_spectral if getattr(recipe, "lr_spectral", None) is not None else recipe.lr,
    }
    groups: dict[tuple[str, bool], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = part_of_param(family, n)
        key = part if part in ("vision", "merger", "spectral") else "llm"
        no_decay = p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias")
        groups.setdefault((key, no_decay), []).append(p)
    out = []
    for (key, no_decay), params in groups.items():
        out.append({"params": params, "lr": lrs[key], "weight_decay": 0.0 if no_decay else recipe.weight_decay, "name": f"{key}{'_no_decay' if no_decay else ''}"})
    return out


def load_model_and_processor(path: str, precision: str = "auto", attn_implementation: str | None = None, quantization: str = "none"):
    """Load with the stock Auto classes; the family comes from config.model_type.

    ``path`` is a local model folder, or a hub id (``Qwen/Qwen2.5-VL-3B-Instruct``) fetched through
    ``geovl model download`` first when a hub is reachable."""
    from pathlib import Path

    from transformers import AutoModelForImageTextToText

    from ..models.loading import load_processor, load_weights, read_family

    folder = Path(path)
    if not folder.is_dir():
        from ..models.download import fetch_for_training

        folder = fetch_for_training(path)
    family = read_family(folder)
    kw = {"dtype": resolve_dtype(precision)}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    q = _quantization_config(quantization)
    if q is not None:
        kw["quantization_config"] = q
    try:
        processor = load_processor(folder)
    except (OSError, ValueError) as e:
        raise ModelSetupError(
            f"{folder}: no usable image-text processor in this model folder ({str(e).splitlines()[0]}).\n"
            "  Fix: a model folder needs the processor files (preprocessor_config.json or processor_config.json, tokenizer files, "
            "chat template) next to config.json: copy them from the base model, or save them with "
            "AutoProcessor.from_pretrained(BASE).save_pretrained(FOLDER)."
        ) from e
    model = load_weights(folder, AutoModelForImageTextToText, **kw)  # a damaged weights file: ModelFolderError naming it
    if get_family(model.config).key != family.key:  # pragma: no cover - defensive
        raise ModelSetupError(f"{folder}: config says {family.key} but the loaded model is {model.config.model_type}")
    return model, processor, family
