"""``geovl train sft RECIPE.yaml [key=value ...]``: supervised fine-tuning.

parse recipe → load model + processor (registry family from config.model_type) → apply the
preprocessing config → measure and filter samples → decide what trains → Trainer → ``OUT/final``
(adapter or full weights, processor, preprocessing config, resolved recipe).

Options that cannot work on this machine (quantization / Liger / fp16 without CUDA, DeepSpeed
without the package, a missing DeepSpeed config) are refused before anything is loaded or written.

Distributed runs: start with ``torchrun --nproc_per_node N -m geovl train sft ...`` (or
``accelerate launch``); rank 0 writes the files. With the environment variable
``GEOVL_RANK_STATE=1`` every rank also writes ``OUT/rank{N}.json`` (a fingerprint of its trained
weights and the sample ids it saw; see :class:`geovl.train.trainer.RankStateCallback`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .recipe import RecipeError, SFTRecipe, load_recipe, save_recipe


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _log(msg: str) -> None:
    if _is_main():
        print(msg, file=sys.stderr, flush=True)


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
        (p for p in d.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)), key=lambda p: int(p.name.split("-")[1])
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


def check_report_to(report_to: list[str]) -> list[str]:
    import importlib.util

    pkgs = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}
    out = []
    for r in report_to:
        if r == "none":
            continue
        mod = pkgs.get(r, r)
        if importlib.util.find_spec(mod) is None:
            raise RecipeError(f"report_to={r}: the {mod} package is not installed (pip install {mod}), or remove it from report_to")
        out.append(r)
    return out


def preflight(recipe) -> None:
    """Refuse options this machine cannot run, before anything is loaded or written.

    Works on any recipe dataclass (SFT, GRPO): a key the recipe does not have is not checked."""
    import importlib.util

    import torch

    from .model_setup import check_quantization

    get = lambda k, d=None: getattr(recipe, k, d)  # noqa: E731
    cuda = torch.cuda.is_available()
    check_quantization(get("quantization", "none"))
    if get("use_liger", False):
        if not cuda:
            raise RecipeError("use_liger=true needs a CUDA GPU (Liger kernels are Triton GPU kernels); set use_liger=false on this machine")
        if importlib.util.find_spec("liger_kernel") is None:
            raise RecipeError("use_liger=true needs the liger-kernel package: pip install liger-kernel")
    if get("precision") == "fp16" and not cuda:
        raise RecipeError("precision=fp16 needs a CUDA GPU; use precision=auto (fp32 here, bf16 on a bf16 GPU)")
    if not 0.0 <= get("warmup_ratio", 0.0) < 1.0:
        raise RecipeError(f"warmup_ratio must be in [0, 1) (a share of all steps), got {get('warmup_ratio')}")
    if get("batch_size", 1) < 1 or get("grad_accum", 1) < 1:
        raise RecipeError("batch_size and grad_accum must be at least 1")
    if get("deepspeed"):
        ds = Path(get("deepspeed"))
        if not ds.is_file():
            raise RecipeError(f"deepspeed={ds}: config file not found (ready ones: recipes/deepspeed/zero2.json, zero3.json, zero3_offload.json)")
        try:
            json.loads(ds.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecipeError(f"{ds}: not valid JSON ({e})") from e
        if importlib.util.find_spec("deepspeed") is None:
            raise RecipeError(
                f"deepspeed={ds}: the deepspeed package is not installed (pip install --no-build-isolation deepspeed==0.19.8; it runs on CPUs too). "
                "Remove the deepspeed key to train with plain DDP / a single device."
            )
    from .sharded import check_fsdp

    check_fsdp(get("fsdp"), get("fsdp_config"), cuda)
    check_report_to(get("report_to", []))


def common_trainer_kwargs(recipe, has_eval: bool, dtype) -> dict:
    """Trainer arguments every geovl recipe (SFT, GRPO) maps the same way."""
    import torch

    use_cpu = not torch.cuda.is_available()
    kw = dict(
        output_dir=recipe.output_dir,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.lr,
        weight_decay=recipe.weight_decay,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,  # a float < 1 is a share of all steps in transformers 5
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        seed=recipe.seed,
        data_seed=recipe.seed,
        dataloader_num_workers=recipe.num_workers,
        remove_unused_columns=False,
        report_to=check_report_to(recipe.report_to),
        activation_checkpointing=recipe.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        use_cpu=use_cpu,
        bf16=str(dtype) == "torch.bfloat16" and not use_cpu,
        fp16=recipe.precision == "fp16",
        disable_tqdm=not recipe.progress_bar,
        use_liger_kernel=recipe.use_liger,
        deepspeed=recipe.deepspeed,
        fsdp=getattr(recipe, "fsdp", None) or None,
        fsdp_config=getattr(recipe, "fsdp_config", None),
        # a text-only batch leaves the vision tower / merger without gradients on that rank: DDP must know
        ddp_find_unused_parameters=True,
    )
    if has_eval:
        kw.update(eval_strategy="steps", eval_steps=recipe.eval_steps or recipe.save_steps)
    return kw


def build_training_args(recipe: SFTRecipe, has_eval: bool, dtype):
    from transformers import TrainingArguments

    kw = common_trainer_kwargs(recipe, has_eval, dtype)
    kw.update(
        dataloader_persistent_workers=recipe.num_workers > 0,  # no worker start-up cost every epoch
        activation_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
    )
    return TrainingArguments(**kw)


def train_sft(recipe: SFTRecipe) -> Path:
    import torch
    from transformers import set_seed

    from ..models.preprocess import PreprocessConfig
    from .data import SFTCollator, SFTDataset
    from .model_setup import format_trainable, load_model_and_processor, param_groups, resolve_dtype, setup_trainable, trainable_table
    from ..spectral.vision_input import preprocess_entry
    from .trainer import GeoVLTrainer, ProgressFileCallback, RankStateCallback, SaveExtrasCallback, shutdown_dataloader_workers

    preflight(recipe)
    out = Path(recipe.output_dir)
    resume_from = None
    if recipe.resume:
        resume_from = last_checkpoint(out, complete=True)
        if resume_from is None:
            raise RecipeError(f"resume=true but {out} has no checkpoint-* folder to resume from (none, or only ones left incomplete by a stop while saving)")
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
        recipe.model, precision=recipe.precision, attn_implementation=recipe.attn_implementation, quantization=recipe.quantization
    )
    pre = PreprocessConfig(min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels, family=family.key)
    try:  # the raster render settings the training images were converted with: serving renders alike
        if pre.take_render_from(recipe.train_data):
            _log(f"raster rendering from the conversion summary: rgb_bands={pre.rgb_bands} band_order={pre.band_order}")
    except ValueError as e:
        raise RecipeError(str(e)) from None
    pre.apply(processor)
    pre.min_pixels, pre.max_pixels = PreprocessConfig.bounds_of(processor)  # record what is actually used
    _log(f"model {recipe.model}: {family.display}; pixels {pre.min_pixels}..{pre.max_pixels}")

    spectral = dict(spectral=recipe.spectral, spectral_root=recipe.spectral_root)
    train_ds = SFTDataset(recipe.train_data, processor, family, recipe.max_visual_tokens, recipe.max_length, pre.min_pixels,
                          pre.max_pixels, progress=_is_main(), **spectral)
    if _is_main():
        train_ds.write_dropped(out / "dropped.jsonl")
        s = train_ds.summary()
        _log(f"train samples: {s['kept']} kept of {s['read']}; dropped whole (never truncated): {s['dropped']} {s['dropped_by_reason'] or ''}")
    if len(train_ds) == 0:
        raise RecipeError(
            f"no trainable samples left in {', '.join(map(str, recipe.train_data))}: {train_ds.summary()}; "
            f"see {out / 'dropped.jsonl'} for each sample's reason (raise max_visual_tokens / max_length, or lower max_pixels)"
        )
    eval_ds = None
    if recipe.eval_data:
        eval_ds = SFTDataset([recipe.eval_data], processor, family, recipe.max_visual_tokens, recipe.max_length, pre.min_pixels,
                             pre.max_pixels, progress=False, **spectral)
        e = eval_ds.summary()
        _log(f"eval samples: {e['kept']} kept of {e['read']} ({e['dropped']} over the budgets or invalid, not evaluated)")
        if len(eval_ds) == 0:
            raise RecipeError(f"eval_data {recipe.eval_data}: no usable samples ({e}); fix the file or remove eval_data")

    si = attach_spectral(model, family, processor, recipe, train_ds)
    if si is not None:
        pre.spectral = preprocess_entry(si.projector)
        for ds in (train_ds, eval_ds):
            if ds is not None:
                ds.projector = si.projector
    if recipe.gradient_checkpointing:
        model.config.use_cache = False
    model, modules_to_save = setup_trainable(model, family, recipe)
    if si is not None:
        si.projector.conv.requires_grad_(True)  # trained with its own lr (lr_spectral); the band statistics stay fixed
    if recipe.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    table = trainable_table(model, family)
    _log(format_trainable(table))

    args = build_training_args(recipe, eval_ds is not None, resolve_dtype(recipe.precision))
    trainer = GeoVLTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=SFTCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        param_groups_fn=lambda m: param_groups(m, family, recipe),
        lengths=train_ds.lengths,
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
            "wall_s": round(time.time() - t0, 1),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _log(f"done: {trainer.state.global_step} steps, final weights in {final}")
    return final


def attach_spectral(model, family, processor, recipe, train_ds):
    """With ``spectral=true``: the projector of the starting model folder (a spectral run's output), or a new one
    initialised to the ``spectral_rgb`` false-colour bands with band statistics of the training cubes."""
    from ..spectral.projector import SpectralProjector
    from ..spectral.vision_input import attach, cube_stats, has_projector

    folder = Path(recipe.model)
    if not recipe.spectral:
        if has_projector(folder):
            raise RecipeError(f"{folder} has a spectral projector (it reads hyperspectral cubes): set spectral=true to train it")
        return None
    if has_projector(folder):
        projector = SpectralProjector.load(folder)
        how = f"continued from {folder}"
    else:
        mean, std, wl, good = cube_stats(train_ds.cube_files())
        projector = SpectralProjector(wl, recipe.spectral_rgb, good, mean, std)
        how = f"new, initialised on bands near {', '.join(f'{w:g}' for w in recipe.spectral_rgb)} nm"
    si = attach(model, family, projector, processor)
    wl = projector.wavelengths
    _log(f"spectral projector: {projector.n_bands} bands ({wl[0]:g}–{wl[-1]:g} nm) → RGB, {how}; lr {recipe.lr_spectral:g}")
    return si


def _tensorboard_into(trainer, folder: Path) -> None:
    """TensorBoard event files go to OUT/tensorboard (unless TENSORBOARD_LOGGING_DIR says otherwise)."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(folder)


def run(args) -> int:
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    recipe = load_recipe(args.recipe, overrides, SFTRecipe)
    train_sft(recipe)
    end_distributed()
    return 0


def end_distributed() -> None:
    """Under torchrun: wait for every rank (rank 0 writes ``final/`` last), then close the process group. A rank
    that exits with the group still open can abort in its communication threads ("terminate called without an
    active exception") and fail the whole launch although training finished. No-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
