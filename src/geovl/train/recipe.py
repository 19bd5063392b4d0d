"""YAML recipes with ``key=value`` overrides, as subclasses of TRL's ``SFTConfig`` / ``GRPOConfig``.

A recipe is a flat YAML mapping. Its keys are the fields of :class:`SFTRecipe` (``geovl train sft``) or
:class:`GRPORecipe` (``geovl train grpo``): every field of transformers' ``TrainingArguments`` and of TRL's
config (``max_grad_norm``, ``optim``, ``adam_beta2``, ``lr_scheduler_kwargs``, ``torch_compile``, ``fsdp``,
``per_device_eval_batch_size``, ...) plus geovl's own (:class:`GeoVLOptions`: what trains, per-part learning
rates, pixel bounds, token budgets, spectral options; GRPO adds prompts and rewards). The object *is* the
config the trainer gets: nothing is copied or forced in between, every default below can be overridden.

Command-line overrides ``key=value`` are parsed as YAML scalars/lists (``learning_rate=2e-5``,
``train_data=[a.parquet,b.parquet]``, ``eval_data=null``). Unknown keys are refused with the closest valid
name. geovl's earlier short names (``lr``, ``epochs``, ``batch_size``, ``grad_accum``, ``lr_scheduler``,
``warmup_ratio``, ``num_workers``, ``use_liger``, ``progress_bar``, ``group_by_length``,
``gradient_checkpointing``) are still accepted and mean the upstream field they name (:data:`ALIASES`).
``deepspeed: zero3`` / ``fsdp: NAME`` pick the shipped configs ``recipes/deepspeed/NAME.json`` /
``recipes/fsdp/NAME.json|yaml``. The resolved recipe (:func:`save_recipe`) loads back into the same object (on a machine of the same kind:
``use_cpu`` / ``bf16`` left to geovl are derived again where it is loaded).

Defaults geovl derives when a key is left out (each can be set explicitly): ``use_cpu`` (no CUDA GPU),
``bf16`` / ``fp16`` (from ``precision``), ``per_device_eval_batch_size`` (= the train batch size),
``data_seed`` (= ``seed``), ``dataloader_persistent_workers`` (with workers), ``eval_strategy`` (``steps``
when ``eval_data`` is given, every ``save_steps``), ``activation_checkpointing_kwargs``
(``use_reentrant: false``), and at training time ``ddp_find_unused_parameters`` (true only when a part
that a text-only batch leaves unused trains: vision tower, merger, spectral projector).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import GRPOConfig, SFTConfig

from ..errors import (
    RecipeError,  # noqa: F401 - re-exported: geovl.train.recipe.RecipeError
)

# geovl's earlier names of upstream fields → (upstream field, value transform)
ALIASES: dict[str, tuple[str, typing.Callable]] = {
    "lr": ("learning_rate", lambda v: v),
    "epochs": ("num_train_epochs", lambda v: v),
    "batch_size": ("per_device_train_batch_size", lambda v: v),
    "grad_accum": ("gradient_accumulation_steps", lambda v: v),
    "lr_scheduler": ("lr_scheduler_type", lambda v: v),
    "warmup_ratio": ("warmup_steps", lambda v: v),  # a float < 1 is a share of all steps in transformers 5
    "num_workers": ("dataloader_num_workers", lambda v: v),
    "use_liger": ("use_liger_kernel", lambda v: v),
    "progress_bar": ("disable_tqdm", lambda v: not v),
    "group_by_length": ("train_sampling_strategy", lambda v: "group_by_length" if v else "random"),
    "gradient_checkpointing": ("activation_checkpointing", lambda v: v),  # transformers 5 name
}
# the type an alias is read as (before its transform)
_ALIAS_TYPES = {"progress_bar": bool, "group_by_length": bool, "gradient_checkpointing": bool}
# fields the saved recipe leaves out: deprecated upstream mirrors of another field, and values upstream derives
_NOT_SAVED = {"gradient_checkpointing", "gradient_checkpointing_kwargs", "generation_batch_size"}

CHOICES = {
    "tune_llm": ("lora", "full", "freeze"),
    "tune_vision": ("lora", "full", "freeze"),
    "tune_merger": ("full", "freeze"),
    "quantization": ("none", "4bit", "8bit"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
GRPO_CHOICES = {
    "loss_type": ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"),
    "scale_rewards": ("group", "batch", "none"),
    "vllm_mode": ("colocate", "server"),
}


def recipes_dir() -> Path:
    """The shipped ``recipes/`` folder (of the source checkout; else ``./recipes``)."""
    here = Path(__file__).resolve().parents[3] / "recipes"
    return here if here.is_dir() else Path.cwd() / "recipes"


def _shipped(kind: str, value: str, suffixes: tuple[str, ...]) -> Path | None:
    """``recipes/<kind>/<value><suffix>`` when ``value`` is a bare name (no folder, no suffix)."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value) or Path(value).suffix in suffixes:
        return None
    folder = recipes_dir() / kind
    for s in suffixes:
        if (folder / f"{value}{s}").is_file():
            return folder / f"{value}{s}"
    names = sorted({p.stem for s in suffixes for p in folder.glob(f"*{s}")}) if folder.is_dir() else []
    raise RecipeError(
        f"{kind}={value}: no shipped config of that name in {folder} (there: {', '.join(names) or 'none'}); "
        f"give a name from that list or a path to a config file"
    )


FSDP_OPTIONS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap")


@dataclass
class GeoVLOptions:
    """geovl's own recipe fields and its defaults for upstream ones: shared by :class:`SFTRecipe` and
    :class:`GRPORecipe` (one copy). Field order is the order of the saved recipe."""

    # -- what and where ---------------------------------------------------------------------
    model: str = ""  # local model folder (or a hub id when a hub is reachable); GRPO: also a LoRA adapter folder
    train_data: list[str] = field(default_factory=list)  # one or more .parquet/.jsonl dataset files
    eval_data: str | None = None  # optional dataset file evaluated during training
    # -- images -----------------------------------------------------------------------------
    min_pixels: int | None = None  # None: the model's processor default (GRPO: the model folder's preprocessing)
    max_pixels: int | None = None
    max_visual_tokens: int | None = None  # per-sample budget: a sample over it is dropped whole
    # -- videos: how {"type": "video"} parts are sampled (geovl.imagery.video.VideoSettings; None: its default);
    # recorded as `video` in geovl_preprocess.json, so every inference path samples alike
    video_fps: float | None = None  # frames sampled per second of video
    video_max_frames: int | None = None  # at most this many frames per video (sampled more sparsely beyond)
    spectral_root: str | None = None  # folder meta.cube paths are relative to (default: each dataset file's folder)
    # -- what trains --------------------------------------------------------------------------
    tune_llm: str = "lora"  # lora | full | freeze
    tune_vision: str = "freeze"  # lora | full | freeze
    tune_merger: str = "full"  # full | freeze
    tune_embeddings: bool = False  # also fully train input embeddings and lm_head
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    use_dora: bool = False
    quantization: str = "none"  # none | 4bit | 8bit (QLoRA through bitsandbytes, CPU or CUDA; docs/qlora.md)
    # -- per-part learning rates (default: learning_rate) ----------------------------------------
    lr_llm: float | None = None
    lr_vision: float | None = None
    lr_merger: float | None = None
    lr_spectral: float = 1e-4  # the spectral projector's own lr
    # -- model loading ------------------------------------------------------------------------
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the model's dtype; bf16/fp16 follow unless set
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    resume: bool = False  # continue from the last checkpoint in output_dir
    # -- geovl defaults of upstream fields (TrainingArguments / TRL) ------------------------------
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int | None = None  # None: = per_device_train_batch_size
    weight_decay: float = 0.0
    logging_steps: float = 10
    logging_first_step: bool = True
    save_steps: float = 500
    save_total_limit: int | None = 3
    eval_strategy: str | None = None  # None: "steps" with eval_data, else "no"
    eval_steps: float | None = None  # None: save_steps
    seed: int = 42
    data_seed: int | None = None  # None: = seed
    remove_unused_columns: bool = False  # the collators need every column
    report_to: None | str | list[str] = field(default_factory=lambda: ["tensorboard"])  # + wandb, swanlab if installed
    activation_checkpointing: bool | None = False
    gradient_checkpointing: bool | None = None  # deprecated upstream name: read as activation_checkpointing
    disable_tqdm: bool | None = False
    use_cpu: bool | None = None  # None: true when no CUDA GPU is available
    bf16: bool | None = None  # None: from precision
    fp16: bool | None = None  # None: from precision
    dataloader_persistent_workers: bool | None = None  # None: true with dataloader_num_workers > 0
    deepspeed: dict | str | None = None  # a JSON config path, or a shipped name: zero2 | zero3 | zero3_offload
    fsdp: str | None = None  # FSDP options ("full_shard auto_wrap"), or a shipped name: recipes/fsdp/NAME.json|yaml

    # -- geovl's short names, read-only (code, benches and plugins written before recipes were TRL configs) --
    lr = property(lambda self: self.learning_rate)
    epochs = property(lambda self: self.num_train_epochs)
    batch_size = property(lambda self: self.per_device_train_batch_size)
    grad_accum = property(lambda self: self.gradient_accumulation_steps)
    lr_scheduler = property(lambda self: str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)))
    warmup_ratio = property(lambda self: self.warmup_steps)
    num_workers = property(lambda self: self.dataloader_num_workers)
    use_liger = property(lambda self: self.use_liger_kernel)
    progress_bar = property(lambda self: not self.disable_tqdm)
    group_by_length = property(lambda self: self.train_sampling_strategy == "group_by_length")

    def __post_init__(self):
        self._resolve_geovl()
        try:
            super().__post_init__()
        except (ValueError, ImportError, NotImplementedError) as e:  # an upstream refusal: name it as a recipe error
            if isinstance(e, RecipeError):
                raise
            raise RecipeError(f"recipe refused by {type(self).__mro__[2].__name__}: {e}") from e
        if (
            self.deepspeed
        ):  # upstream started torch.distributed and armed zero.Init: DeepSpeed's comm must see that group
            from .sharded import ready_deepspeed_comm

            ready_deepspeed_comm()
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise RecipeError(
                "per_device_train_batch_size (batch_size) and gradient_accumulation_steps (grad_accum) must be at least 1"
            )

    def _resolve_geovl(self) -> None:
        """geovl's checks and derived defaults, before upstream's ``__post_init__`` reads the fields."""
        for k, allowed in {**CHOICES, **self._choices()}.items():
            if getattr(self, k) not in allowed:
                raise RecipeError(f"{k}: {getattr(self, k)!r} is not one of {allowed}")
        ws = self.warmup_steps
        if isinstance(ws, float) and not ws.is_integer() and not 0.0 <= ws < 1.0 or ws < 0:
            raise RecipeError(
                f"warmup_ratio / warmup_steps must be a share in [0, 1) or a number of steps >= 0, got {ws}"
            )
        # derived from this machine: not written into the saved recipe, so it derives them again where it is used
        self._machine_derived = {k for k in ("use_cpu", "bf16") if getattr(self, k) is None}
        if self.use_cpu is None:
            import torch

            self.use_cpu = not torch.cuda.is_available()
        if self.bf16 is None or self.fp16 is None:
            from .model_setup import resolve_dtype

            dtype = resolve_dtype(self.precision)
            if self.bf16 is None:
                self.bf16 = str(dtype) == "torch.bfloat16" and not self.use_cpu
            if self.fp16 is None:
                self.fp16 = self.precision == "fp16"
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.data_seed is None:
            self.data_seed = self.seed
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.eval_strategy is None:
            self.eval_strategy = "steps" if self.eval_data else "no"
        if self.eval_steps is None and str(self.eval_strategy) in ("steps", "IntervalStrategy.STEPS"):
            self.eval_steps = self.save_steps
        if self.activation_checkpointing is None or self.gradient_checkpointing is not None:
            self.activation_checkpointing = bool(self.gradient_checkpointing)
            self.gradient_checkpointing = None
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        if self.report_to is None:
            self.report_to = []
        if isinstance(self.deepspeed, str):
            ds = _shipped("deepspeed", self.deepspeed, (".json",)) or Path(self.deepspeed)
            if not ds.is_file():
                raise RecipeError(
                    f"deepspeed={ds}: config file not found (shipped, by name or path: zero2, zero3, zero3_offload = "
                    f"{recipes_dir() / 'deepspeed'}/zero2.json, zero3.json, zero3_offload.json)"
                )
            try:
                json.loads(ds.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise RecipeError(f"{ds}: not valid JSON ({e})") from e
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise RecipeError(
                    f"deepspeed={ds}: the deepspeed package is not installed (pip install --no-build-isolation deepspeed==0.19.8; it runs on CPUs too). "
                    "Remove the deepspeed key to train with plain DDP / a single device."
                )
            self.deepspeed = str(ds)
        if (
            isinstance(self.fsdp, str)
            and self.fsdp.strip()
            and " " not in self.fsdp.strip()
            and self.fsdp not in FSDP_OPTIONS
        ):
            path = _shipped("fsdp", self.fsdp, (".json", ".yaml", ".yml"))
            if path is None:
                raise RecipeError(
                    f"fsdp={self.fsdp}: give FSDP options ({', '.join(FSDP_OPTIONS)}) or a shipped config name"
                )
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
            if not isinstance(cfg, dict):
                raise RecipeError(f"{path}: an FSDP config must be a mapping")
            if self.fsdp_config not in (None, {}):
                raise RecipeError(
                    f"fsdp={self.fsdp} names a shipped config: leave fsdp_config out (or give fsdp options + fsdp_config)"
                )
            self.fsdp, self.fsdp_config = "full_shard auto_wrap", cfg
        if isinstance(self.fsdp_config, str) and self.fsdp_config:  # a path: upstream opens it in __post_init__
            from .sharded import read_fsdp_config_file

            read_fsdp_config_file(self.fsdp_config)  # missing / broken: FSDPUnavailable naming the file

    def _choices(self) -> dict:
        return {}


@dataclass
class SFTRecipe(GeoVLOptions, SFTConfig):
    """``geovl train sft``: TRL's ``SFTConfig`` + :class:`GeoVLOptions` + the SFT-only keys below."""

    output_dir: str = "runs/sft"
    max_length: int | None = None  # per-sample sequence budget: over it → dropped whole, never truncated
    spectral: bool = False  # images are the cubes in meta.cube, through a trained N-band → RGB projector
    spectral_rgb: list[float] = field(default_factory=lambda: [1650.0, 2200.0, 2330.0])  # projector init bands (nm)
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03  # < 1: a share of all steps
    train_sampling_strategy: str = "group_by_length"  # batches of similar length (little padding)
    # packing (TRL's SFTConfig field, read by geovl's own packer; SFTTrainer's text packing is never used):
    # several samples per row, no padding, no attention across samples (geovl.train.packing, docs/packing.md)
    packing: bool = False
    packing_tokens: int | None = None  # tokens per packed row; default batch size × mean sample length (≥ the longest)
    gpu_memory: str | None = (
        None  # e.g. 24GiB: refuse to start if the longest batch would not fit (docs/memory-guard.md)
    )


@dataclass
class GRPORecipe(GeoVLOptions, GRPOConfig):
    """``geovl train grpo``: TRL's ``GRPOConfig`` + :class:`GeoVLOptions` + prompts and rewards."""

    output_dir: str = "runs/grpo"
    max_prompt_length: int | None = None  # prompt tokens incl. image tokens: over it → dropped whole, counted
    max_completion_length: int = 32
    num_generations: int = 4  # completions per prompt (the group)
    beta: float = 0.0  # KL to the reference policy (0: no reference model is kept)
    loss_type: str = "dapo"
    reward_funcs: list[str] = field(default_factory=lambda: _default_rewards())  # built-in names
    reward_file: str | None = None  # plugin: every *_reward function in it is added
    reward_weights: dict = field(default_factory=dict)  # {name: weight}, default 1.0 (TRL's list is built from it)
    share_prompts: bool = False  # encode + prefill each prompt once per group (train/shared_rollout.py)
    lora_dropout: float = 0.0
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: float = 0.0

    def _choices(self) -> dict:
        return GRPO_CHOICES

    def __post_init__(self):
        if not isinstance(self.reward_weights, dict):
            raise RecipeError("reward_weights must be a mapping {reward name: weight}, e.g. {count_reward: 2.0}")
        if self.num_generations < 2:
            raise RecipeError("num_generations must be at least 2 (GRPO compares completions within a group)")
        if self.generation_batch_size is None and self.steps_per_generation is None:
            import os

            world = int(os.environ.get("WORLD_SIZE", "1"))
            per_gen = self.per_device_train_batch_size * self.gradient_accumulation_steps * world
            if per_gen % self.num_generations:
                raise RecipeError(
                    f"batch_size × grad_accum × processes = {per_gen} completions per generation round must be a multiple of "
                    f"num_generations={self.num_generations}; e.g. batch_size={self.num_generations}"
                )
        weights, self.reward_weights = self.reward_weights, None  # TRL checks a list; geovl keeps the mapping
        try:
            super().__post_init__()
        finally:
            self.reward_weights = weights

    def trainer_config(self, weights: list[float]) -> GRPORecipe:
        """A copy for TRL's ``GRPOTrainer``: ``reward_weights`` as the list aligned with the reward functions."""
        c = copy.copy(self)
        c.reward_weights = list(weights)
        return c


def _default_rewards() -> list[str]:
    from ..rewards.funcs import DEFAULT_REWARDS  # imported late: rewards.plugins imports RecipeError from here

    return list(DEFAULT_REWARDS)


# -- parsing ------------------------------------------------------------------------------------


def _field_types(cls) -> dict[str, object]:
    """Each field's type; for an upstream field geovl gives another default, upstream's type (its enum of
    choices), optional where geovl's default is None (a value derived later)."""
    hints = typing.get_type_hints(cls)
    upstream = typing.get_type_hints(cls.__mro__[2])
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        if f.name in upstream and f.name not in ("reward_weights", "fsdp"):
            tp = upstream[f.name]
            if f.default is None:
                tp = tp | None if isinstance(tp, type) else typing.Optional[tp]
        out[f.name] = tp
    return out


def _coerce(name: str, value, tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        enums = [a for a in non_none if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:  # e.g. SchedulerType | str: the value must be one of the enum's
            return _coerce(name, value, enums[0])
        errors = []
        for a in non_none:
            try:
                return _coerce(name, value, a)
            except RecipeError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise RecipeError(f"{name}: {value!r} is not one of {args}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = tuple(m.value for m in tp)
        v = value.value if isinstance(value, enum.Enum) else value
        if v not in allowed:
            raise RecipeError(f"{name}: {value!r} is not one of {allowed}")
        return v
    if origin is list or tp is list:
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        return [_coerce(name, v, args[0]) for v in value] if args else value
    if origin is dict or tp is dict:
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if not isinstance(value, dict):
            raise RecipeError(f"{name}: expected a mapping {{key: value}}, got {value!r}")
        return value
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
        if isinstance(value, bool):
            raise RecipeError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None:
            raise RecipeError(f"{name}: a value is required")
        if isinstance(value, (list, dict)):
            raise RecipeError(f"{name}: expected a single value, got {value!r}")
        return value if isinstance(value, bool) else str(value)  # fsdp: true (a saved recipe) stays a bool
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


def _geovl_keys(cls) -> list[str]:
    upstream = {f.name for f in dataclasses.fields(cls.__mro__[2])}
    return [f.name for f in dataclasses.fields(cls) if f.name not in upstream]


def _check_keys(src: str, d: dict, cls, types_: dict) -> None:
    unknown = [k for k in d if k not in types_ and k not in ALIASES]
    if not unknown:
        return
    names = list(types_) + list(ALIASES)
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, names, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    upstream = cls.__mro__[2].__name__
    raise RecipeError(
        f"{src}: unknown recipe key(s) {', '.join(hints)}. Valid keys: every field of trl.{upstream} / transformers.TrainingArguments, "
        f"geovl's own: {', '.join(sorted(_geovl_keys(cls)))}; short names: {', '.join(sorted(ALIASES))}"
    )


def _canonical(src: str, d: dict, types_: dict) -> dict:
    """Typed values under the upstream field names (short names mapped)."""
    out: dict = {}
    for k, v in d.items():
        if k in ALIASES:
            target, fn = ALIASES[k]
            if target in d:
                raise RecipeError(
                    f"{src}: both {k!r} and {target!r} given; {k} is geovl's short name for {target}: keep one"
                )
            v = fn(_coerce(k, v, _ALIAS_TYPES.get(k, types_[target])))
            k = target
        out[k] = _coerce(k, v, types_[k])
    return out


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, cls=SFTRecipe):
    """The recipe object: YAML file (or none) + ``key=value`` overrides, checked and resolved."""
    recipe = cls(**recipe_kwargs(path, overrides, cls))
    if not recipe.model:
        raise RecipeError("model is required (a model folder or hub id): add model=... ")
    if not recipe.train_data:
        raise RecipeError("train_data is required: add train_data=FILE.parquet")
    return recipe


def recipe_kwargs(path: str | Path | None, overrides: list[str] | None = None, cls=SFTRecipe) -> dict:
    """Keys and value types checked, short names mapped; the object is not built (no upstream side effects:
    what a launcher checks before it starts the processes that build it)."""
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
        _check_keys(src, d, cls, types_)
    return {**_canonical(where, data, types_), **_canonical("command line", over, types_)}


def recipe_dict(recipe) -> dict:
    """The resolved recipe as plain YAML values: every field (upstream and geovl), loadable by :func:`load_recipe`."""
    d = recipe.to_dict()  # upstream's: enums as values, tokens masked
    skip = _NOT_SAVED | getattr(recipe, "_machine_derived", set())
    ds = d.get("deepspeed")
    if isinstance(ds, str) and Path(ds).parent == recipes_dir() / "deepspeed":
        d["deepspeed"] = Path(ds).stem  # the shipped config by name: the saved recipe works in another checkout
    out = {}
    for f in dataclasses.fields(recipe):
        if not f.init or f.name in skip or f.name not in d:
            continue
        v = d[f.name]
        if isinstance(v, str) and v.startswith("<") and v.endswith("_TOKEN>"):
            continue  # a masked secret: never written
        if dataclasses.is_dataclass(v):
            v = dataclasses.asdict(v)
        out[f.name] = v
    return json.loads(json.dumps(out, default=str))  # plain types only (tuples → lists, odd objects → str)


def save_recipe(recipe, folder: str | Path, name: str = "recipe.yaml") -> Path:
    p = Path(folder) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(recipe_dict(recipe), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p
