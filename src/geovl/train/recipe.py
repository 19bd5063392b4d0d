"""YAML recipes with ``key=value`` overrides.

A recipe is a flat YAML mapping whose keys are the fields of a recipe dataclass
(:class:`SFTRecipe`; GRPO adds its own). Command-line overrides ``key=value`` are parsed as YAML
scalars/lists (``lr=2e-5``, ``train_data=[a.parquet,b.parquet]``, ``eval_data=null``). Unknown
keys are refused with the list of valid ones. The resolved recipe is saved into the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class RecipeError(ValueError):
    pass


@dataclass
class SFTRecipe:
    # -- what and where ---------------------------------------------------------------------
    model: str = ""  # local model folder (or a hub id when a hub is reachable)
    train_data: list[str] = field(default_factory=list)  # one or more .parquet/.jsonl dataset files
    eval_data: str | None = None  # optional dataset file evaluated by loss during training
    output_dir: str = "runs/sft"
    # -- images -----------------------------------------------------------------------------
    min_pixels: int | None = None  # None: the model's processor default
    max_pixels: int | None = None
    max_visual_tokens: int | None = None  # per-sample budget: a sample over it is dropped whole
    max_length: int | None = None  # per-sample sequence budget: dropped whole, never truncated
    # -- what trains --------------------------------------------------------------------------
    tune_llm: str = "lora"  # lora | full | freeze
    tune_vision: str = "freeze"  # lora | full | freeze
    tune_merger: str = "full"  # full | freeze
    tune_embeddings: bool = False  # also fully train input embeddings and lm_head
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    use_dora: bool = False
    quantization: str = "none"  # none | 4bit | 8bit (QLoRA; needs CUDA + bitsandbytes)
    # -- hyperspectral input (geovl.spectral.vision_input) ---------------------------------------
    spectral: bool = False  # images are the cubes in meta.cube, through a trained N-band → RGB projector
    spectral_rgb: list[float] = field(default_factory=lambda: [1650.0, 2200.0, 2330.0])  # projector init bands (nm)
    spectral_root: str | None = None  # folder meta.cube paths are relative to (default: each dataset file's folder)
    # -- optimisation -------------------------------------------------------------------------
    lr: float = 1e-4
    lr_llm: float | None = None  # default: lr
    lr_vision: float | None = None  # default: lr
    lr_merger: float | None = None  # default: lr
    lr_spectral: float = 1e-4  # the spectral projector's own lr (with spectral=true)
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4  # per device
    grad_accum: int = 1
    lr_scheduler: str = "cosine"  # cosine | linear | constant | constant_with_warmup
    warmup_ratio: float = 0.03
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    seed: int = 42
    num_workers: int = 0  # DataLoader workers decoding images
    use_liger: bool = False
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (see recipes/deepspeed/)
    fsdp: str | None = None  # TrainingArguments.fsdp, e.g. full_shard (with fsdp_config: recipes/fsdp/fsdp2.json)
    fsdp_config: str | None = None  # path to an FSDP JSON config (TrainingArguments.fsdp_config)
    # -- logging and checkpoints --------------------------------------------------------------
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    eval_steps: int | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # + wandb, swanlab if installed
    resume: bool = False  # continue from the last checkpoint in output_dir
    progress_bar: bool = True


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value, tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(name, value, non_none[0])
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        return [_coerce(name, v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RecipeError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RecipeError(f"{name}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise RecipeError(f"{name}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise RecipeError(f"{name}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None:
            raise RecipeError(f"{name}: a value is required")
        return str(value)
    return value


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            out[k] = yaml.safe_load(v) if v.strip() != "" else None
        except yaml.YAMLError:
            out[k] = v
    return out


CHOICES = {
    "tune_llm": ("lora", "full", "freeze"),
    "tune_vision": ("lora", "full", "freeze"),
    "tune_merger": ("full", "freeze"),
    "quantization": ("none", "4bit", "8bit"),
    "lr_scheduler": ("cosine", "linear", "constant", "constant_with_warmup"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, cls=SFTRecipe):
    data: dict = {}
    where = "command line"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"{p}: recipe file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"{p}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise RecipeError(f"{p}: a recipe must be a mapping of key: value")
        where = str(p)
    over = parse_overrides(overrides or [])
    types_ = _field_types(cls)
    for src, d in ((where, data), ("command line", over)):
        unknown = [k for k in d if k not in types_]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, types_, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise RecipeError(
                f"{src}: unknown recipe key(s) {', '.join(hints)}. Valid keys: {', '.join(sorted(types_))}"
            )
    merged = {**data, **over}
    kwargs = {k: _coerce(k, v, types_[k]) for k, v in merged.items()}
    recipe = cls(**kwargs)
    for k, allowed in CHOICES.items():
        if hasattr(recipe, k) and getattr(recipe, k) not in allowed:
            raise RecipeError(f"{k}: {getattr(recipe, k)!r} is not one of {allowed}")
    if hasattr(recipe, "model") and not recipe.model:
        raise RecipeError("model is required (a model folder or hub id): add model=... ")
    if hasattr(recipe, "train_data") and not recipe.train_data:
        raise RecipeError("train_data is required: add train_data=FILE.parquet")
    return recipe


def save_recipe(recipe, folder: str | Path, name: str = "recipe.yaml") -> Path:
    p = Path(folder) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(dataclasses.asdict(recipe), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p
