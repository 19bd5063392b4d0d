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

``share_prompts=true`` encodes and prefills each prompt once per group and branches its ``num_generations``
completions from the shared KV cache (:mod:`geovl.train.shared_rollout`); ``train_summary.json`` then counts
the rows and distinct prompts generated (``share_counts``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .recipe import GRPORecipe, RecipeError, save_recipe
from .sft import _is_main, _log, _tensorboard_into, last_checkpoint, preflight, recipe_video_settings, trainer_args


def preflight_grpo(recipe: GRPORecipe) -> None:
    import importlib.util

    preflight(recipe)  # the SFT checks: quantization / liger / fp16 / report_to
    if recipe.max_completion_length < 1:
        raise RecipeError("max_completion_length must be at least 1")
    if recipe.temperature <= 0:
        raise RecipeError("temperature must be > 0 (GRPO samples several different completions per prompt)")
    if recipe.beta < 0:
        raise RecipeError("beta (KL weight) must be >= 0")
    if recipe.max_prompt_length is not None and recipe.max_prompt_length < 1:
        raise RecipeError("max_prompt_length must be positive (or null for no limit)")
    if recipe.share_prompts:  # before the vLLM check: name what share_prompts cannot work with
        from .shared_rollout import check_recipe

        check_recipe(
            use_vllm=recipe.use_vllm,
            continuous_batching=recipe.use_transformers_continuous_batching,
            cache_implementation=recipe.cache_implementation,
            attn_implementation=recipe.attn_implementation,
        )
    if recipe.use_vllm and importlib.util.find_spec("vllm") is None:
        raise RecipeError(
            "use_vllm=true needs the vllm package and a CUDA GPU (pip install vllm); set use_vllm=false here"
        )


def resolve_run_rewards(recipe: GRPORecipe):
    """(functions, names, weights) of a recipe; plugin problems become :class:`RecipeError`."""
    from ..rewards.plugins import RewardPluginError, resolve_rewards

    try:
        return resolve_rewards(recipe.reward_funcs, recipe.reward_file, recipe.reward_weights)
    except RewardPluginError as e:
        raise RecipeError(f"reward_file: {e}") from e


def load_policy(recipe: GRPORecipe):
    """(model, processor, family, preprocess config, modules_to_save, adapter folder or None, the attached
    :class:`~geovl.models.vision_input.VisionInput`: RGB, or e.g. a spectral projector)."""
    from peft import PeftModel

    from ..inference.adapter import has_processor, is_adapter_folder, resolve_folders
    from ..models.preprocess import PreprocessConfig
    from .model_setup import ModelSetupError, load_model_and_processor, setup_trainable, training_vision_input

    src = Path(recipe.model)
    kw = dict(
        precision=recipe.precision, attn_implementation=recipe.attn_implementation, quantization=recipe.quantization
    )
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
        _log(
            f"continuing to train the LoRA adapter {adapter_dir} on {base_dir} (the recipe's LoRA / tune_* keys are ignored)"
        )
    else:
        model, processor, family = load_model_and_processor(recipe.model, **kw)
        saved = PreprocessConfig.load(src) if src.is_dir() else None
        model, modules_to_save = setup_trainable(model, family, recipe)
        base_dir, adapter_dir = src, None
    # the folder's vision input: e.g. a model trained with a spectral projector (`geovl train sft` with spectral=true)
    # reads cubes: the projector goes in front of the vision tower again and trains on with its own lr
    try:
        si = training_vision_input(model, family, processor, recipe, adapter_dir, base_dir, log=_log)
    except ModelSetupError as e:
        raise RecipeError(str(e)) from None
    si.set_trainable()
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


def _check_output_dir(recipe: GRPORecipe) -> Path | None:
    out = Path(recipe.output_dir)
    if recipe.resume:
        ck = last_checkpoint(out, complete=True)
        if ck is None:
            raise RecipeError(
                f"resume=true but {out} has no checkpoint-* folder to resume from (none, or only ones left incomplete by a stop while saving)"
            )
        return ck
    if (out / "final").exists():
        raise RecipeError(f"{out} already holds a finished run (final/); choose another output_dir or pass resume=true")
    ck = last_checkpoint(out)
    if ck is not None:
        raise RecipeError(
            f"{out} holds checkpoints of an unfinished run ({ck.name}); pass --resume (resume=true) or choose another output_dir"
        )
    return None


def train_grpo(recipe: GRPORecipe) -> Path:
    import torch
    from transformers import set_seed

    from .grpo_data import GRPOPrompts
    from .grpo_trainer import GeoVLGRPOTrainer, GRPOProgressCallback
    from .model_setup import format_trainable, param_groups, trainable_table
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

    spectral = type(si).dataset_kwargs(recipe)  # how the prompts read images
    if pre.video is None or recipe.video_fps is not None or recipe.video_max_frames is not None:
        # how videos are sampled (inference samples alike); unset: the policy folder's (e.g. an SFT run's)
        pre.video = recipe_video_settings(recipe).to_dict()
    video = pre.video_settings()  # as every inference path reads them (frame size bounded by max_pixels)
    prompts = GRPOPrompts(
        recipe.train_data,
        processor,
        family,
        recipe.max_prompt_length,
        recipe.max_visual_tokens,
        pre.min_pixels,
        pre.max_pixels,
        progress=_is_main() and not recipe.disable_tqdm,
        video_settings=video,
        **spectral,
    )
    if _is_main():
        prompts.write_dropped(out / "dropped.jsonl")
        s = prompts.summary()
        _log(
            f"train prompts: {s['kept']} kept of {s['read']}; dropped whole (never truncated): {s['dropped']} {s['dropped_by_reason'] or ''}"
        )
        if s.get("video_prompts"):
            _log(f"video prompts: {s['video_prompts']} ({s['video_subsampled']} with frames thinned to fit the budget)")
    if len(prompts) == 0:
        raise RecipeError(
            f"no usable prompts in {', '.join(map(str, recipe.train_data))}: {prompts.summary()}; see {out / 'dropped.jsonl'} "
            "(raise max_prompt_length / max_visual_tokens, or lower max_pixels)"
        )
    eval_prompts = None
    if recipe.eval_data:
        eval_prompts = GRPOPrompts(
            [recipe.eval_data],
            processor,
            family,
            recipe.max_prompt_length,
            recipe.max_visual_tokens,
            pre.min_pixels,
            pre.max_pixels,
            progress=False,
            video_settings=video,
            **spectral,
        )
        if len(eval_prompts) == 0:
            raise RecipeError(
                f"eval_data {recipe.eval_data}: no usable prompts ({eval_prompts.summary()}); fix the file or remove eval_data"
            )

    if recipe.share_prompts and any(p is not None and p.n_video for p in (prompts, eval_prompts)):
        from .grpo_trainer import NO_SHARED_VIDEO

        n = prompts.n_video + (eval_prompts.n_video if eval_prompts is not None else 0)
        raise RecipeError(f"{n} prompt(s) have videos. {NO_SHARED_VIDEO}")
    for p in (prompts, eval_prompts):
        if p is not None:
            si.bind(p)
    if recipe.activation_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    table = trainable_table(model, family)
    _log(format_trainable(table))

    args = trainer_args(
        recipe.trainer_config(weights), table
    )  # the recipe is the GRPOConfig; TRL gets reward_weights as a list
    trainer = GeoVLGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=prompts.to_dataset(),
        eval_dataset=eval_prompts.to_dataset() if eval_prompts is not None else None,
        # TRL calls the processor itself: e.g. a spectral policy gets a copy that takes cubes by default
        processing_class=si.training_processor(processor),
        param_groups_fn=lambda m: param_groups(m, family, recipe),
        family=family,
        share_prompts=recipe.share_prompts,
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
            shutil.rmtree(
                final / "ref"
            )  # TRL's frozen reference copy of the adapter (beta > 0): not part of the result
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
            "share_counts": trainer.share_counts if recipe.share_prompts else None,
            "timings": {k: round(v, 3) if isinstance(v, float) else v for k, v in trainer.timings.items()},
            "wall_s": round(time.time() - t0, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(f"done: {trainer.state.global_step} steps, final weights in {final}")
    return final
