"""``geovl train sft RECIPE.yaml [key=value ...]``: supervised fine-tuning.

parse recipe → load model + processor (registry family from config.model_type) → apply the
preprocessing config → measure and filter samples → decide what trains → Trainer → ``OUT/final``
(adapter or full weights, processor, preprocessing config, resolved recipe).

Options that cannot work on this machine (quantization / Liger / fp16 without CUDA, DeepSpeed
without the package, a missing DeepSpeed config) are refused before anything is loaded or written.

Distributed runs: ``geovl train sft RECIPE --nproc N`` (or ``torchrun --nproc_per_node N -m geovl train sft ...``,
``accelerate launch -m geovl train sft ...``); rank 0 writes the files. With the environment variable
``GEOVL_RANK_STATE=1`` every rank also writes ``OUT/rank{N}.json`` (a fingerprint of its trained
weights and the sample ids it saw; see :class:`geovl.train.trainer.RankStateCallback`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .recipe import RecipeError, SFTRecipe, save_recipe


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _log(msg: str) -> None:
    from ..log import main_process_logger

    main_process_logger("geovl.train").info(msg)


def last_checkpoint(output_dir: str | Path, complete: bool = False) -> Path | None:
    """The highest ``checkpoint-N`` folder of a run (None if there is none).

    ``complete=True`` (what to resume from): the highest one whose ``trainer_state.json`` exists — the Trainer
    writes it last, after the weights, optimizer and RNG state, so a run killed while saving a checkpoint
    leaves a folder without it; that folder is skipped (and said so), the one before is used."""
    import re

    d = Path(output_dir)
    if not d.is_dir():
        return None
    found = sorted(
        (p for p in d.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    if not complete:
        return found[-1] if found else None
    for p in reversed(found):
        if (p / "trainer_state.json").is_file():
            from .sharded import check_resume_world_size

            check_resume_world_size(p)  # a ZeRO checkpoint of another world size: refused before anything loads
            return p
        _log(f"skipping {p}: incomplete (no trainer_state.json; the run stopped while saving it)")
    return None


def check_report_to(report_to) -> list[str]:
    import importlib.util

    pkgs = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}
    out = []
    for r in [report_to] if isinstance(report_to, str) else report_to or []:
        if r == "none":
            continue
        mod = pkgs.get(r, r)
        if importlib.util.find_spec(mod) is None:
            raise RecipeError(
                f"report_to={r}: the {mod} package is not installed (pip install {mod}), or remove it from report_to"
            )
        out.append(r)
    return out


def preflight(recipe) -> None:
    """Refuse options this machine cannot run, before any model is loaded or a file written (the recipe itself
    refused bad keys, values and missing DeepSpeed/FSDP configs when it was built). Works on SFT and GRPO recipes."""
    import importlib.util

    import torch

    from .model_setup import check_quantization

    cuda = torch.cuda.is_available()
    check_quantization(recipe.quantization, recipe.tune_llm)
    if recipe.use_liger_kernel:
        if not cuda:
            raise RecipeError(
                "use_liger=true needs a CUDA GPU (Liger kernels are Triton GPU kernels); set use_liger=false on this machine"
            )
        if importlib.util.find_spec("liger_kernel") is None:
            raise RecipeError("use_liger=true needs the liger-kernel package: pip install liger-kernel")
    if (recipe.precision == "fp16" or recipe.fp16) and not cuda:
        raise RecipeError("precision=fp16 needs a CUDA GPU; use precision=auto (fp32 here, bf16 on a bf16 GPU)")
    if recipe.bf16 and not cuda and not recipe.use_cpu:
        raise RecipeError("bf16=true needs a bf16 GPU, or use_cpu=true; leave bf16 out to follow precision")
    packing_tokens = getattr(recipe, "packing_tokens", None)  # SFT only
    if packing_tokens is not None and packing_tokens < 1:
        raise RecipeError(f"packing_tokens must be at least 1, got {packing_tokens}")
    recipe_video_settings(recipe)  # a bad video_fps / video_max_frames is named before any model loads
    from .sharded import check_fsdp

    check_fsdp(recipe.fsdp, cuda)
    check_report_to(recipe.report_to)


def trainer_args(recipe, table):
    """The recipe as the Trainer's arguments: a copy with ``ddp_find_unused_parameters`` decided when the recipe
    leaves it out — true only when a part that a text-only batch leaves without gradients trains (vision tower,
    merger, spectral projector: DDP must then look for unused parameters), false for the LLM alone (no extra graph
    walk every step). The recipe itself (saved in the run folder) keeps the user's value."""
    import copy

    args = copy.copy(recipe)
    if args.ddp_find_unused_parameters is None:
        args.ddp_find_unused_parameters = any(table.get(p, (0, 0))[0] > 0 for p in ("vision", "merger", "spectral"))
    if getattr(args, "packing", False):  # one packed row per step; rows in shuffled order (no length grouping needed)
        args.per_device_train_batch_size = 1
        args.train_sampling_strategy = "random"
    return args


def recipe_video_settings(recipe):
    """The :class:`~geovl.imagery.video.VideoSettings` of a recipe's ``video_fps`` / ``video_max_frames`` (unset:
    the defaults); a bad value is a :class:`RecipeError`."""
    from dataclasses import replace

    from ..imagery.video import VideoSettings

    changes = {}
    for key, name, cast in (("video_fps", "fps", float), ("video_max_frames", "max_frames", int)):
        v = getattr(recipe, key, None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or cast(v) != v:
            raise RecipeError(f"{key} must be a positive {'number' if cast is float else 'integer'}, got {v!r}")
        changes[name] = cast(v)
    if changes.get("max_frames", 2) < 2:
        raise RecipeError("video_max_frames must be at least 2 (Qwen-VL merges frames in pairs)")
    try:
        return replace(VideoSettings(), **changes)
    except ValueError as e:
        raise RecipeError(f"video settings: {e}") from None


def train_sft(recipe: SFTRecipe) -> Path:
    import torch
    from transformers import set_seed

    from ..models.preprocess import PreprocessConfig
    from .data import SFTCollator, SFTDataset
    from .model_setup import (
        format_trainable,
        load_model_and_processor,
        param_groups,
        setup_trainable,
        trainable_table,
        training_vision_input,
        vision_input_class,
    )
    from .trainer import (
        GeoVLTrainer,
        ProgressFileCallback,
        RankStateCallback,
        SaveExtrasCallback,
        shutdown_dataloader_workers,
    )

    preflight(recipe)
    out = Path(recipe.output_dir)
    resume_from = None
    if recipe.resume:
        resume_from = last_checkpoint(out, complete=True)
        if resume_from is None:
            raise RecipeError(
                f"resume=true but {out} has no checkpoint-* folder to resume from (none, or only ones left incomplete by a stop while saving)"
            )
        _log(f"resuming from {resume_from}")
    elif (out / "final").exists():
        raise RecipeError(f"{out} already holds a finished run (final/); choose another output_dir or pass resume=true")
    elif last_checkpoint(out) is not None:
        raise RecipeError(
            f"{out} holds checkpoints of an unfinished run ({last_checkpoint(out).name}); pass --resume (resume=true) "
            "to continue it, or choose another output_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    if _is_main():
        save_recipe(recipe, out)

    t0 = time.time()
    model, processor, family = load_model_and_processor(
        recipe.model,
        precision=recipe.precision,
        attn_implementation=recipe.attn_implementation,
        quantization=recipe.quantization,
    )
    pre = PreprocessConfig(min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels, family=family.key)
    try:  # the raster render settings the training images were converted with: serving renders alike
        if pre.take_render_from(recipe.train_data):
            _log(f"raster rendering from the conversion summary: rgb_bands={pre.rgb_bands} band_order={pre.band_order}")
    except ValueError as e:
        raise RecipeError(str(e)) from None
    pre.video = recipe_video_settings(recipe).to_dict()  # how videos are sampled: inference samples alike
    pre.apply(processor)
    pre.min_pixels, pre.max_pixels = PreprocessConfig.bounds_of(processor)  # record what is actually used
    video = pre.video_settings()  # as every inference path reads them (frame size bounded by max_pixels)
    _log(f"model {recipe.model}: {family.display}; pixels {pre.min_pixels}..{pre.max_pixels}")

    vision = "spectral" if recipe.spectral else "rgb"  # the vision input kind asked for
    spectral = vision_input_class(vision, Path(recipe.model))[0].dataset_kwargs(recipe)  # how the datasets read images
    train_ds = SFTDataset(
        recipe.train_data,
        processor,
        family,
        recipe.max_visual_tokens,
        recipe.max_length,
        pre.min_pixels,
        pre.max_pixels,
        progress=_is_main(),
        video_settings=video,
        **spectral,
    )
    if _is_main():
        train_ds.write_dropped(out / "dropped.jsonl")
        s = train_ds.summary()
        _log(
            f"train samples: {s['kept']} kept of {s['read']}; dropped whole (never truncated): {s['dropped']} {s['dropped_by_reason'] or ''}"
        )
    if len(train_ds) == 0:
        raise RecipeError(
            f"no trainable samples left in {', '.join(map(str, recipe.train_data))}: {train_ds.summary()}; "
            f"see {out / 'dropped.jsonl'} for each sample's reason (raise max_visual_tokens / max_length, or lower max_pixels)"
        )
    if recipe.gpu_memory:  # the memory guard: refuse before training if the longest batch would not fit
        from ..models.memory import format_check, guard_training

        _log(format_check(guard_training(recipe, family, train_ds, pre.min_pixels, pre.max_pixels)))
    eval_ds = None
    if recipe.eval_data:
        eval_ds = SFTDataset(
            [recipe.eval_data],
            processor,
            family,
            recipe.max_visual_tokens,
            recipe.max_length,
            pre.min_pixels,
            pre.max_pixels,
            progress=False,
            video_settings=video,
            **spectral,
        )
        e = eval_ds.summary()
        _log(
            f"eval samples: {e['kept']} kept of {e['read']} ({e['dropped']} over the budgets or invalid, not evaluated)"
        )
        if len(eval_ds) == 0:
            raise RecipeError(
                f"eval_data {recipe.eval_data}: no usable samples ({e}); fix the file or remove eval_data"
            )

    vi = training_vision_input(
        model, family, processor, recipe, Path(recipe.model), kind=vision, dataset=train_ds, log=_log
    )
    vi.record(pre)
    for ds in (train_ds, eval_ds):
        if ds is not None:
            vi.bind(ds)
    if recipe.activation_checkpointing:
        model.config.use_cache = False
    model, modules_to_save = setup_trainable(model, family, recipe)
    vi.set_trainable()  # e.g. a spectral projector, with its own lr (lr_spectral)
    if recipe.activation_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    table = trainable_table(model, family)
    _log(format_trainable(table))

    trained_ds = train_ds
    if recipe.packing:
        from .packing import PackedSFTDataset, PackingError, check_packable, default_budget, enable_packing

        budget = recipe.packing_tokens or default_budget(train_ds.lengths, recipe.batch_size)
        try:
            check_packable(model, spectral=recipe.spectral)
            trained_ds = PackedSFTDataset(train_ds, budget, recipe.seed)
        except PackingError as e:
            raise RecipeError(f"{e}; {e.hint}" if e.hint else str(e)) from None
        enable_packing(model)
        p = trained_ds.summary()
        _log(
            f"packing: {p['samples']} samples in {p['rows']} rows of ≤ {budget} tokens (mean {p['mean_row_tokens']}); no padding"
        )

    args = trainer_args(recipe, table)  # the recipe is the TrainingArguments (an SFTConfig)
    trainer = GeoVLTrainer(
        model=model,
        args=args,
        train_dataset=trained_ds,
        eval_dataset=eval_ds,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        param_groups_fn=lambda m: param_groups(m, family, recipe),
        lengths=None if recipe.packing else train_ds.lengths,
    )
    _tensorboard_into(trainer, out / "tensorboard")
    progress = ProgressFileCallback(out / "progress.jsonl", trainer)
    trainer.add_callback(progress)
    trainer.add_callback(SaveExtrasCallback(processor, pre))
    trainer.add_callback(RankStateCallback(trainer))
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        shutdown_dataloader_workers(trainer)

    final = out / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
        pre.save(final)
        save_recipe(recipe, final)
        summary = {
            "family": family.key,
            "steps": trainer.state.global_step,
            "resumed_from": str(resume_from) if resume_from else None,  # token counts below cover this process's part
            "world_size": args.world_size,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "train_loss": result.training_loss,
            "samples": train_ds.summary(),
            "trainable": {k: {"trainable": t, "total": a} for k, (t, a) in table.items()},
            "modules_to_save": modules_to_save,
            "real_tokens": trainer.real_tokens,
            "padded_tokens": trainer.padded_tokens,
            "padding_fraction": round(1 - trainer.real_tokens / max(trainer.padded_tokens, 1), 4),
            "packing": trained_ds.summary() if recipe.packing else None,
            "wall_s": round(time.time() - t0, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(f"done: {trainer.state.global_step} steps, final weights in {final}")
    return final


def _tensorboard_into(trainer, folder: Path) -> None:
    """TensorBoard event files go to OUT/tensorboard (unless TENSORBOARD_LOGGING_DIR says otherwise)."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(folder)


def end_distributed() -> None:
    """Under torchrun: wait for every rank (rank 0 writes ``final/`` last), then close the process group. A rank
    that exits with the group still open can abort in its communication threads ("terminate called without an
    active exception") and fail the whole launch although training finished. No-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
