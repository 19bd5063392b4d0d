"""``geovl train grpo RECIPE.yaml [key=value ...]``: GRPO with rule-based rewards, on TRL's ``GRPOTrainer``.

recipe → policy model (base folder, a full fine-tuned folder, or a LoRA adapter folder) → pixel
bounds → prompts measured and filtered (over ``max_prompt_length`` → dropped whole and counted,
never truncated) → rewards (built-ins from :mod:`geovl.rewards` + a ``reward_file`` plugin, with
weights) → TRL ``GRPOTrainer`` (subclassed: :mod:`geovl.train.grpo_trainer`) → ``OUT/final``.

The run folder looks like SFT's: ``checkpoint-N/`` (with processor + ``geovl_preprocess.json``),
``final/``, ``progress.jsonl`` (one line per log step, with the mean of every reward function
``rewards/<name>/mean`` and the total ``reward``), ``train_summary.json``, ``dropped.jsonl``,
``recipe.yaml``. ``geovl eval --model OUT/final`` loads the result.

Starting from a LoRA adapter folder (an SFT run's ``final/`` with ``adapter_config.json``): the
base model named in the adapter is loaded and **the adapter itself continues training** (no
merge) — ``OUT/final`` is then again an adapter on the same base, and the recipe's LoRA / tune_*
keys are ignored (the adapter decides what trains, including its ``modules_to_save`` such as the
merger). From a model folder (base or full fine-tune) ``tune_llm`` / ``tune_vision`` /
``tune_merger`` apply as in SFT (LoRA by default, merger trainable).

A starting folder with a spectral projector (``geovl train sft`` with ``spectral=true``) makes the run
spectral: prompts carry the samples' cubes and the projector trains on with ``lr_spectral``
(docs/spectral.md, "GRPO on cubes").

``use_vllm=true`` passes through to TRL (``vllm_mode`` colocate/server) for GPU machines with vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..rewards.funcs import DEFAULT_REWARDS
from .recipe import RecipeError, load_recipe, save_recipe
from .sft import _is_main, _log, _tensorboard_into, common_trainer_kwargs, end_distributed, last_checkpoint, preflight


@dataclass
class GRPORecipe:
    # -- what and where ---------------------------------------------------------------------
    model: str = ""  # base model folder, a full-FT folder, or a LoRA adapter folder (an SFT run's final/)
    train_data: list[str] = field(default_factory=list)
    eval_data: str | None = None  # optional: rewards on these prompts every eval_steps
    output_dir: str = "runs/grpo"
    # -- images and lengths ---------------------------------------------------------------------
    min_pixels: int | None = None  # None: the model folder's preprocessing config / processor default
    max_pixels: int | None = None
    spectral_root: str | None = None  # a spectral policy: folder meta.cube paths are relative to (default: each dataset file's)
    max_visual_tokens: int | None = None  # per-sample budget: over it → dropped whole
    max_prompt_length: int | None = None  # prompt tokens incl. image tokens: over it → dropped whole, counted
    max_completion_length: int = 32  # generated tokens per completion
    # -- GRPO --------------------------------------------------------------------------------------
    num_generations: int = 4  # completions per prompt (the group)
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0  # KL to the reference policy (0: no reference model is kept)
    loss_type: str = "dapo"  # TRL: grpo | dapo | dr_grpo | bnpo | ...
    scale_rewards: str = "group"  # group | batch | none
    num_iterations: int = 1
    reward_funcs: list[str] = field(default_factory=lambda: list(DEFAULT_REWARDS))  # built-in names
    reward_file: str | None = None  # plugin: every *_reward function in it is added
    reward_weights: dict = field(default_factory=dict)  # {name: weight}, default 1.0
    use_vllm: bool = False  # GPU + vLLM only; passes through to TRL
    vllm_mode: str = "colocate"  # colocate | server
    log_completions: bool = False
    # -- what trains (model folders; an adapter folder keeps its own setup) ---------------------
    tune_llm: str = "lora"
    tune_vision: str = "freeze"
    tune_merger: str = "full"
    tune_embeddings: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    use_dora: bool = False
    quantization: str = "none"
    # -- optimisation -------------------------------------------------------------------------
    lr: float = 1e-5
    lr_llm: float | None = None
    lr_vision: float | None = None
    lr_merger: float | None = None
    lr_spectral: float = 1e-4  # a spectral policy's projector (see spectral_root)
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4  # completions per device per step (a multiple of num_generations with grad_accum)
    grad_accum: int = 1
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = False
    seed: int = 42
    num_workers: int = 0
    use_liger: bool = False
    precision: str = "auto"
    attn_implementation: str | None = None
    deepspeed: str | None = None
    fsdp: str | None = None  # as in SFT: TrainingArguments.fsdp / fsdp_config
    fsdp_config: str | None = None
    # -- logging and checkpoints --------------------------------------------------------------
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    eval_steps: int | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    resume: bool = False
    progress_bar: bool = True


GRPO_CHOICES = {"loss_type": ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"), "scale_rewards": ("group", "batch", "none"), "vllm_mode": ("colocate", "server")}


def preflight_grpo(recipe: GRPORecipe) -> None:
    import importlib.util

    for k, allowed in GRPO_CHOICES.items():
        if getattr(recipe, k) not in allowed:
            raise RecipeError(f"{k}: {getattr(recipe, k)!r} is not one of {allowed}")
    preflight(recipe)  # the SFT checks: quantization / liger / fp16 / deepspeed / report_to / batch sizes
    if recipe.num_generations < 2:
        raise RecipeError("num_generations must be at least 2 (GRPO compares completions within a group)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_gen = recipe.batch_size * recipe.grad_accum * world
    if per_gen % recipe.num_generations:
        raise RecipeError(
            f"batch_size × grad_accum × processes = {per_gen} completions per generation round must be a multiple of "
            f"num_generations={recipe.num_generations}; e.g. batch_size={recipe.num_generations}"
        )
    if recipe.max_completion_length < 1:
        raise RecipeError("max_completion_length must be at least 1")
    if recipe.temperature <= 0:
        raise RecipeError("temperature must be > 0 (GRPO samples several different completions per prompt)")
    if recipe.beta < 0:
        raise RecipeError("beta (KL weight) must be >= 0")
    if recipe.max_prompt_length is not None and recipe.max_prompt_length < 1:
        raise RecipeError("max_prompt_length must be positive (or null for no limit)")
    if recipe.use_vllm and importlib.util.find_spec("vllm") is None:
        raise RecipeError("use_vllm=true needs the vllm package and a CUDA GPU (pip install vllm); set use_vllm=false here")
    if not isinstance(recipe.reward_weights, dict):
        raise RecipeError("reward_weights must be a mapping {reward name: weight}, e.g. {count_reward: 2.0}")


def resolve_run_rewards(recipe: GRPORecipe):
    """(functions, names, weights) of a recipe; plugin problems become :class:`RecipeError`."""
    from ..rewards.plugins import RewardPluginError, resolve_rewards

    try:
        return resolve_rewards(recipe.reward_funcs, recipe.reward_file, recipe.reward_weights)
    except RewardPluginError as e:
        raise RecipeError(f"reward_file: {e}") from e


def load_policy(recipe: GRPORecipe):
    """(model, processor, family, preprocess config, modules_to_save, adapter folder or None, the attached
    :class:`~geovl.spectral.vision_input.SpectralInput` or None)."""
    from peft import PeftModel

    from ..models.preprocess import PreprocessConfig
    from ..serve.adapter import has_processor, is_adapter_folder, resolve_folders
    from ..spectral.vision_input import load_into
    from .model_setup import load_model_and_processor, setup_trainable

    src = Path(recipe.model)
    kw = dict(precision=recipe.precision, attn_implementation=recipe.attn_implementation, quantization=recipe.quantization)
    if src.is_dir() and is_adapter_folder(src) and not (src / "config.json").is_file():
        base_dir, adapter_dir = resolve_folders(src, None)
        model, processor, family = load_model_and_processor(str(base_dir), **kw)
        if has_processor(adapter_dir):  # saved by training next to the adapter (its pixel bounds)
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(adapter_dir))
        from .resume import ADAPTER_FILE, check_adapter_restored, read_safetensors

        read_safetensors(adapter_dir / ADAPTER_FILE)  # a damaged file: a ResumeError naming it
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        check_adapter_restored(model, adapter_dir)  # peft loads leniently: every tensor of the file, with its value
        saved = PreprocessConfig.load(adapter_dir) or PreprocessConfig.load(base_dir)
        modules_to_save = sorted(getattr(model.peft_config["default"], "modules_to_save", None) or [])
        _log(f"continuing to train the LoRA adapter {adapter_dir} on {base_dir} (the recipe's LoRA / tune_* keys are ignored)")
    else:
        model, processor, family = load_model_and_processor(recipe.model, **kw)
        saved = PreprocessConfig.load(src) if src.is_dir() else None
        model, modules_to_save = setup_trainable(model, family, recipe)
        base_dir, adapter_dir = src, None
    # a model trained with a spectral projector (`geovl train sft` with spectral=true) reads cubes: the projector
    # goes in front of the vision tower again and trains on with its own lr
    si = load_into(model, family, processor, adapter_dir, base_dir)
    if si is not None:
        si.projector.conv.requires_grad_(True)
        _log(f"spectral projector: {si.n_bands} bands → RGB, from {adapter_dir or base_dir}; lr {recipe.lr_spectral:g}")
    elif saved is not None and saved.spectral:
        raise RecipeError(f"{adapter_dir or base_dir}: the preprocessing config says the model reads {saved.spectral.get('n_bands')}-band "
                          "cubes but spectral_projector.json/.safetensors are missing")
    pre = saved or PreprocessConfig()
    pre.family = family.key
    if saved is None or not (saved.rgb_bands or saved.band_order):
        try:  # the raster render settings the training images were converted with
            pre.take_render_from(recipe.train_data)
        except ValueError as e:
            raise RecipeError(str(e)) from None
    if recipe.min_pixels is not None:
        pre.min_pixels = recipe.min_pixels
    if recipe.max_pixels is not None:
        pre.max_pixels = recipe.max_pixels
    pre.apply(processor)
    pre.min_pixels, pre.max_pixels = PreprocessConfig.bounds_of(processor)  # record what is actually used
    processor.tokenizer.padding_side = "left"  # TRL pads prompts on the left (generation continues from the end)
    return model, processor, family, pre, modules_to_save, adapter_dir, si


def build_grpo_config(recipe: GRPORecipe, has_eval: bool, dtype, weights: list[float]):
    from trl import GRPOConfig

    kw = common_trainer_kwargs(recipe, has_eval, dtype)
    # TRL turns gradient checkpointing on by default; the common mapping passes the recipe's choice
    kw["report_to"] = kw["report_to"] or "none"
    kw.update(
        num_generations=recipe.num_generations,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        beta=recipe.beta,
        loss_type=recipe.loss_type,
        scale_rewards=recipe.scale_rewards,
        num_iterations=recipe.num_iterations,
        reward_weights=weights,
        use_vllm=recipe.use_vllm,
        vllm_mode=recipe.vllm_mode,
        log_completions=recipe.log_completions,
    )
    return GRPOConfig(**kw)


def _check_output_dir(recipe: GRPORecipe) -> Path | None:
    out = Path(recipe.output_dir)
    if recipe.resume:
        ck = last_checkpoint(out, complete=True)
        if ck is None:
            raise RecipeError(f"resume=true but {out} has no checkpoint-* folder to resume from (none, or only ones left incomplete by a stop while saving)")
        return ck
    if (out / "final").exists():
        raise RecipeError(f"{out} already holds a finished run (final/); choose another output_dir or pass resume=true")
    ck = last_checkpoint(out)
    if ck is not None:
        raise RecipeError(f"{out} holds checkpoints of an unfinished run ({ck.name}); pass --resume (resume=true) or choose another output_dir")
    return None


def train_grpo(recipe: GRPORecipe) -> Path:
    import torch
    from transformers import set_seed

    from ..spectral.vision_input import cube_processor
    from .grpo_data import GRPOPrompts
    from .grpo_trainer import GeoVLGRPOTrainer, GRPOProgressCallback
    from .model_setup import format_trainable, param_groups, resolve_dtype, trainable_table
    from .trainer import SaveExtrasCallback

    preflight_grpo(recipe)
    funcs, names, weights = resolve_run_rewards(recipe)  # a broken plugin fails before any model loads
    resume_from = _check_output_dir(recipe)
    out = Path(recipe.output_dir)
    if resume_from:
        _log(f"resuming from {resume_from}")
    out.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    if _is_main():
        save_recipe(recipe, out)

    t0 = time.time()
    model, processor, family, pre, modules_to_save, adapter_dir, si = load_policy(recipe)
    _log(f"model {recipe.model}: {family.display}; pixels {pre.min_pixels}..{pre.max_pixels}")
    _log(f"rewards: {', '.join(f'{n}×{w:g}' for n, w in zip(names, weights))}")

    spectral = dict(spectral=si is not None, spectral_root=recipe.spectral_root)
    prompts = GRPOPrompts(recipe.train_data, processor, family, recipe.max_prompt_length, recipe.max_visual_tokens, pre.min_pixels,
                          pre.max_pixels, progress=_is_main() and recipe.progress_bar, **spectral)
    if _is_main():
        prompts.write_dropped(out / "dropped.jsonl")
        s = prompts.summary()
        _log(f"train prompts: {s['kept']} kept of {s['read']}; dropped whole (never truncated): {s['dropped']} {s['dropped_by_reason'] or ''}")
    if len(prompts) == 0:
        raise RecipeError(
            f"no usable prompts in {', '.join(map(str, recipe.train_data))}: {prompts.summary()}; see {out / 'dropped.jsonl'} "
            "(raise max_prompt_length / max_visual_tokens, or lower max_pixels)"
        )
    eval_prompts = None
    if recipe.eval_data:
        eval_prompts = GRPOPrompts([recipe.eval_data], processor, family, recipe.max_prompt_length, recipe.max_visual_tokens, pre.min_pixels,
                                   pre.max_pixels, progress=False, **spectral)
        if len(eval_prompts) == 0:
            raise RecipeError(f"eval_data {recipe.eval_data}: no usable prompts ({eval_prompts.summary()}); fix the file or remove eval_data")

    if si is not None:
        for p in (prompts, eval_prompts):
            if p is not None:
                p.projector = si.projector
    if recipe.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    table = trainable_table(model, family)
    _log(format_trainable(table))

    args = build_grpo_config(recipe, eval_prompts is not None, resolve_dtype(recipe.precision), weights)
    trainer = GeoVLGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=prompts.to_dataset(),
        eval_dataset=eval_prompts.to_dataset() if eval_prompts is not None else None,
        # TRL calls the processor itself: a spectral policy gets a copy that takes cubes by default
        processing_class=cube_processor(processor) if si is not None else processor,
        param_groups_fn=lambda m: param_groups(m, family, recipe),
        family=family,
    )
    _tensorboard_into(trainer, out / "tensorboard")
    trainer.add_callback(GRPOProgressCallback(out / "progress.jsonl", trainer))
    trainer.add_callback(SaveExtrasCallback(processor, pre))
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    final = out / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        peft_cfg = getattr(trainer.model, "peft_config", None) or {}
        if "ref" in peft_cfg and (final / "ref").is_dir():
            shutil.rmtree(final / "ref")  # TRL's frozen reference copy of the adapter (beta > 0): not part of the result
        processor.save_pretrained(final)
        pre.save(final)
        save_recipe(recipe, final)
        rewards_logged = {}
        for rec in trainer.state.log_history:
            for k, v in rec.items():
                if k.startswith("rewards/") and k.endswith("/mean") and v is not None:
                    rewards_logged.setdefault(k.split("/")[1], []).append(v)
        summary = {
            "family": family.key,
            "model": recipe.model,
            "continued_adapter": str(adapter_dir) if adapter_dir else None,
            "steps": trainer.state.global_step,
            "resumed_from": str(resume_from) if resume_from else None,
            "world_size": args.world_size,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "train_loss": result.training_loss,
            "prompts": prompts.summary(),
            "rewards": {n: w for n, w in zip(names, weights)},
            "reward_means_first_last": {k: [v[0], v[-1]] for k, v in rewards_logged.items()},
            "trainable": {k: {"trainable": t, "total": a} for k, (t, a) in table.items()},
            "modules_to_save": modules_to_save,
            "tokens_seen": trainer.real_tokens,
            "timings": {k: round(v, 3) if isinstance(v, float) else v for k, v in trainer.timings.items()},
            "wall_s": round(time.time() - t0, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(f"done: {trainer.state.global_step} steps, final weights in {final}")
    return final


def run(args) -> int:
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    recipe = load_recipe(args.recipe, overrides, GRPORecipe)
    train_grpo(recipe)
    end_distributed()
    return 0
