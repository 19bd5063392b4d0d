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


QUANT_SKIPS_WHY = (
    "the vision tower and merger stay in full precision (small, and trained fully or with LoRA), as does lm_head"
)


def check_quantization(quantization: str, tune_llm: str | None = None) -> None:
    """Refuse 4bit/8bit (QLoRA) where it cannot run, before anything is loaded.

    bitsandbytes >= 0.45 runs its 4-bit (nf4) and 8-bit layers on CPU as well as on CUDA; whether this
    machine's build really does is probed with one small layer (forward + backward) on the device the run
    will use, so a missing native library is named here instead of failing mid-run. Quantized weights
    cannot be trained themselves: ``tune_llm=full`` is refused."""
    if quantization == "none":
        return
    if quantization not in ("4bit", "8bit"):
        raise ModelSetupError(f"quantization={quantization!r}: use none, 4bit or 8bit")
    if tune_llm == "full":
        raise ModelSetupError(
            f"quantization={quantization} with tune_llm=full: quantized weights cannot be trained; "
            "use tune_llm=lora (QLoRA) or quantization=none"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelSetupError(
            f"quantization={quantization} needs bitsandbytes: pip install bitsandbytes==0.50.2"
        ) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    why = _probe_bitsandbytes(quantization, device)
    if why:
        raise ModelSetupError(
            f"quantization={quantization}: bitsandbytes {bitsandbytes.__version__} cannot run {quantization} layers on "
            f"this machine's {device} ({why}). Use quantization=none here."
        )


_PROBED: dict[tuple[str, str], str | None] = {}


def _probe_bitsandbytes(quantization: str, device: str) -> str | None:
    """None if a 64×64 bitsandbytes layer of this kind runs forward and backward on ``device``; else why not."""
    key = (quantization, device)
    if key not in _PROBED:
        import warnings

        import bitsandbytes as bnb

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bitsandbytes warns about optional kernels and dtype casts
                lin = torch.nn.Linear(64, 64)
                if quantization == "4bit":
                    q = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4")
                else:
                    q = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
                    q.weight = bnb.nn.Int8Params(lin.weight.data, requires_grad=False, has_fp16_weights=False)
                q.bias = lin.bias
                q = q.to(device)
                x = torch.randn(2, 64, device=device, requires_grad=True)
                q(x).sum().backward()
                ok = x.grad is not None and bool(torch.isfinite(x.grad).all())
            _PROBED[key] = None if ok else "the probe layer gave no finite input gradient"
        except Exception as e:  # noqa: BLE001 - any failure of the native library means: cannot run here
            _PROBED[key] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return _PROBED[key]


def quantization_compute_dtype(precision: str) -> torch.dtype:
    """The dtype bitsandbytes dequantizes to for the matmuls: the run's precision (``auto``: bfloat16 on a bf16
    GPU, float32 elsewhere — CPUs included, where float32 matmuls are the fast and exact path)."""
    return resolve_dtype(precision)


def _quantization_config(quantization: str, precision: str = "auto", family: Family | None = None):
    check_quantization(quantization)
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    # only the LLM's linear layers are quantized: QUANT_SKIPS_WHY
    skip = [family.vision_prefix, family.lm_head] if family is not None else None
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=quantization_compute_dtype(precision),
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


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
    full_parts = {
        p
        for p, mode in (("llm", recipe.tune_llm), ("vision", recipe.tune_vision), ("merger", recipe.tune_merger))
        if mode == "full"
    }
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
        modules_to_save += top_level_matches(model, family.vision_blocks) + top_level_matches(
            model, family.vision_embed
        )
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
    out: OrderedDict[str, list[int]] = OrderedDict(
        (k, [0, 0]) for k in ("spectral", "vision", "merger", "llm", "embed", "lm_head", "other")
    )
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
    """Optimizer parameter groups: per part (own lr) × (decay / no decay), then the vision input's own
    (:meth:`geovl.models.vision_input.VisionInput.parameter_groups`, with the recipe's lr for it)."""
    from ..models.vision_input import attached

    lrs = {
        "vision": recipe.lr_vision if recipe.lr_vision is not None else recipe.lr,
        "merger": recipe.lr_merger if recipe.lr_merger is not None else recipe.lr,
        "llm": recipe.lr_llm if recipe.lr_llm is not None else recipe.lr,
    }
    vi = attached(model)
    own = {id(p) for _, p in vi.named_trainable()}
    groups: dict[tuple[str, bool], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad or id(p) in own:
            continue
        part = part_of_param(family, n)
        key = part if part in ("vision", "merger") else "llm"
        no_decay = p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias")
        groups.setdefault((key, no_decay), []).append(p)
    out = []
    for (key, no_decay), params in groups.items():
        out.append(
            {
                "params": params,
                "lr": lrs[key],
                "weight_decay": 0.0 if no_decay else recipe.weight_decay,
                "name": f"{key}{'_no_decay' if no_decay else ''}",
            }
        )
    own_lr = getattr(recipe, vi.lr_field, None) if vi.lr_field else None
    return out + vi.parameter_groups(own_lr if own_lr is not None else recipe.lr, recipe.weight_decay)


def training_vision_input(
    model, family: Family, processor, recipe, *folders, kind: str | None = None, dataset=None, log=None
):
    """The vision input a run trains with (attached to ``model``), chosen by the starting folders (adapter
    first) — or asked for by ``kind`` (SFT's ``spectral: true`` asks for ``"spectral"``, else ``"rgb"``): a
    folder that holds another kind than the one asked for is refused. See :func:`vision_input_class`."""
    from ..models.vision_input import VisionInputError

    cls, folder = vision_input_class(kind, *folders)
    try:
        return cls.for_training(model, family, processor, recipe, folder, dataset=dataset, log=log)
    except VisionInputError as e:
        raise ModelSetupError(str(e)) from None


def vision_input_class(kind: str | None, *folders):
    """(the vision input class a run trains with, the starting folder holding its files or None): ``kind``
    when given (a starting folder holding RGB or no files gets a new one), else the folders' own (adapter
    first); :class:`ModelSetupError` when a folder holds another kind than ``kind``, or an unknown one."""
    from ..models.vision_input import RGB, VisionInputError, implementation, resolve

    try:
        found, folder = resolve(*folders)
        if kind is None:
            return found, folder
        want = implementation(kind)
    except VisionInputError as e:
        raise ModelSetupError(str(e)) from None
    if found.kind not in (RGB, want.kind):
        raise ModelSetupError(f"{folder} has {found.description}: set {found.kind}=true to train it")
    return want, folder if found is want else None


def load_model_and_processor(
    path: str, precision: str = "auto", attn_implementation: str | None = None, quantization: str = "none"
):
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
    q = _quantization_config(quantization, precision, family)
    if q is not None:
        # bitsandbytes quantizes while loading onto the device: this process's GPU (LOCAL_RANK under torchrun), else the CPU
        import os

        kw.update(
            quantization_config=q,
            device_map=f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu",
        )
    try:
        processor = load_processor(folder)
    except (OSError, ValueError) as e:
        raise ModelSetupError(
            f"{folder}: no usable image-text processor in this model folder ({str(e).splitlines()[0]}).\n"
            "  Fix: a model folder needs the processor files (preprocessor_config.json or processor_config.json, tokenizer files, "
            "chat template) next to config.json: copy them from the base model, or save them with "
            "AutoProcessor.from_pretrained(BASE).save_pretrained(FOLDER)."
        ) from e
    model = load_weights(
        folder, AutoModelForImageTextToText, **kw
    )  # a damaged weights file: ModelFolderError naming it
    if get_family(model.config).key != family.key:  # pragma: no cover - defensive
        raise ModelSetupError(f"{folder}: config says {family.key} but the loaded model is {model.config.model_type}")
    return model, processor, family
