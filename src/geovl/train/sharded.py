"""Distributed engines (DeepSpeed ZeRO, FSDP2, DDP): every rank runs the vision tower in every forward pass.

Why: under ZeRO-3 / FSDP2 a module's weights are gathered from all ranks (a collective) each time the
module runs. A Qwen-VL forward runs the vision tower only when its batch holds images, so when one rank's
batch has images and another's has none, the ranks issue different collectives: gloo aborts ("Received
data size doesn't match expected size. Is there a distributed collective mismatch in your code?"),
NCCL hangs until its timeout. The same happens in backward, where the vision tower's gradients are
reduced across ranks.

The fix (:func:`keep_vision_tower_in_step`): forward hooks on the model. When a forward pass reaches the
language model without having run the vision tower (a text-only batch), the vision tower runs on a
tiny dummy image (one merged patch) at the point where it would have run, and ``0 ×`` the sum of the
outputs a real call feeds the language model (:func:`used_outputs`) is added to the input embeddings. The ranks then gather and reduce the same weights in the same
order; the loss, the logits and the gradients are unchanged (the dummy contributes exact zeros).
Different numbers of images per rank need nothing: the tower runs once per forward either way.
Tested on CPU with DeepSpeed ZeRO-2/3 (tests/test_sharded.py); the FSDP2 (DTensor) case is not, since accelerate
does not run FSDP on CPUs.

ZeRO-1/2 (and DDP without ``find_unused_parameters``) break the same way in backward when part of the tower (the
merger) trains: a rank without images has no gradient for it, and ZeRO-2's gradient buckets differ between ranks
(gloo: "Received data size doesn't match expected size", measured here with ZeRO-2 on a mixed batch).

The hooks are cheap no-ops in a single process, and when the tower's weights are neither sharded (ZeRO-3
partitioned parameters, FSDP2 DTensors) nor trained; decode steps of ``generate`` (a filled KV cache, no
vision input on any rank by construction) are skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import GeoVLError

_HOOKED = "_geovl_vision_keepalive"


def _vl_core(model):
    """The module that owns both ``visual`` and ``language_model`` (Qwen2-VL / Qwen2.5-VL / Qwen3-VL ``*Model``)."""
    for m in model.modules():
        if hasattr(m, "visual") and hasattr(m, "language_model") and isinstance(m.visual, torch.nn.Module):
            return m
    return None


def _active(module) -> bool:
    """True in a multi-process run when the vision tower's weights are sharded (ZeRO-3 partitioned parameters, FSDP2
    DTensors: every forward gathers them) or any of them trains (ZeRO-1/2 and DDP reduce its gradients every step)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    for p in module.parameters():
        if p.requires_grad or hasattr(p, "ds_id") or type(p).__name__ == "DTensor":
            return True
    return False


def dummy_vision_input(visual) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values, grid_thw) of the smallest image the tower accepts: one temporal patch of
    ``merge × merge`` spatial patches, i.e. one visual token after the merger."""
    cfg = visual.config
    merge = int(getattr(cfg, "spatial_merge_size", 2))
    patch = int(getattr(cfg, "patch_size", 14))
    temporal = int(getattr(cfg, "temporal_patch_size", 2))
    channels = int(getattr(cfg, "in_channels", getattr(cfg, "in_chans", 3)))
    grid = torch.tensor([[1, merge, merge]], dtype=torch.long)
    p = next(visual.parameters())
    device = p.device if p.device.type != "meta" else torch.device("cpu")
    pixels = torch.zeros(merge * merge, channels * temporal * patch * patch, dtype=p.dtype, device=device)
    return pixels, grid.to(device)


def _sum_floats(out) -> torch.Tensor | None:
    """Sum of every floating tensor in a (nested) model output."""
    if torch.is_tensor(out):
        return out.float().sum() if out.is_floating_point() else None
    if isinstance(out, dict):
        vals = out.values()
    elif isinstance(out, (list, tuple)):
        vals = out
    elif hasattr(out, "to_tuple"):
        vals = out.to_tuple()
    else:
        return None
    total = None
    for v in vals:
        s = _sum_floats(v)
        if s is not None:
            total = s if total is None else total + s
    return total


def used_outputs(out):
    """The parts of a vision-tower output that a real forward feeds to the language model: the merged image features
    (``pooler_output``) and Qwen3-VL's deepstack features — not the pre-merger ``last_hidden_state``. ZeRO-3 counts a
    module's backward once per output tensor that gradients reach, so the dummy must reach the same ones as a real call
    (else the ranks' recorded module traces differ: "Detected a disagreement on list length between rank0 and rank1")."""
    if torch.is_tensor(out) or not hasattr(out, "pooler_output") or out.pooler_output is None:
        return out
    return [out.pooler_output, *(getattr(out, "deepstack_features", None) or [])]


def _has_filled_cache(kwargs) -> bool:
    cache = kwargs.get("past_key_values")
    if cache is None:
        return False
    try:
        return int(cache.get_seq_length()) > 0
    except Exception:  # an unknown cache object: be safe, treat as a decode step
        return True


def keep_vision_tower_in_step(model) -> bool:
    """Install the hooks described in the module docstring on ``model`` (idempotent). Returns False when the model
    has no Qwen-VL vision tower (nothing to do)."""
    core = _vl_core(model)
    if core is None:
        return False
    if getattr(core, _HOOKED, False):
        return True
    state = {"ran": False, "decode": False}

    def on_core(module, args, kwargs):
        state["ran"] = False
        state["decode"] = _has_filled_cache(kwargs)

    def on_visual(module, args, output):
        state["ran"] = True

    def on_language_model(module, args, kwargs):
        if state["ran"] or state["decode"] or kwargs.get("inputs_embeds") is None or not _active(core.visual):
            return None
        pixels, grid = dummy_vision_input(core.visual)
        total = _sum_floats(used_outputs(core.visual(pixels, grid_thw=grid)))
        state["ran"] = True
        if total is None:
            return None
        emb = kwargs["inputs_embeds"]
        kwargs["inputs_embeds"] = emb + (0.0 * total).to(emb.dtype)
        return args, kwargs

    core.register_forward_pre_hook(on_core, with_kwargs=True)
    core.visual.register_forward_hook(on_visual)
    core.language_model.register_forward_pre_hook(on_language_model, with_kwargs=True)
    setattr(core, _HOOKED, True)
    return True


def ready_deepspeed_comm() -> bool:
    """Make DeepSpeed's communication layer use the process group that is already up (before a model is loaded).

    Building a recipe with ``deepspeed`` (a ``TrainingArguments``) starts ``torch.distributed`` in each launched process
    and registers the DeepSpeed config, so that ``from_pretrained`` builds the model inside ZeRO-3's ``zero.Init``. On
    CPUs (``use_cpu``) transformers starts the group through accelerate's CPU path, which leaves ``deepspeed.comm``
    uninitialised; ``zero.Init`` then reads its config with a world size of 1 and refuses the batch sizes the recipe
    filled in for all ranks ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size
    4 != 2 * 1 * 1"). Wrapping the existing group (``deepspeed.init_distributed`` on an initialised group creates no new
    one) gives ``zero.Init`` the real world size. No-op in a single process and when DeepSpeed's layer is up already.
    Returns whether DeepSpeed's layer is initialised afterwards."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    import deepspeed
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)
    return ds_comm.is_initialized()


class ShardedCheckpointError(GeoVLError, ValueError):
    """A sharded (DeepSpeed ZeRO) checkpoint this launch cannot resume: saved by another number of processes."""


def zero_checkpoint_world_size(checkpoint: str | Path) -> int | None:
    """How many data-parallel processes saved a DeepSpeed ZeRO checkpoint (its per-rank optimizer shards), or None
    when ``checkpoint`` holds no ZeRO shards (DDP, FSDP or single-process checkpoints)."""
    ck = Path(checkpoint)
    latest = ck / "latest"
    tag_dirs = (
        [ck / latest.read_text(encoding="utf-8").strip()] if latest.is_file() else sorted(ck.glob("global_step*"))
    )
    ranks = set()
    for d in tag_dirs:
        for f in d.glob("*zero_pp_rank_*_mp_rank_*_optim_states.pt"):
            m = re.search(r"zero_pp_rank_(\d+)_mp_rank_", f.name)
            if m:
                ranks.add(int(m.group(1)))
    return len(ranks) or None


def check_resume_world_size(checkpoint: str | Path, world_size: int | None = None) -> None:
    """Refuse, before anything loads, to resume a ZeRO checkpoint with a different number of processes.

    DeepSpeed 0.19 cannot re-partition ZeRO optimizer state on load ("Automatic adjustment of ZeRO's optimizer state
    partitioning with a new world size is not currently supported", raised deep inside the Trainer after the model is
    built); FSDP2 checkpoints (torch.distributed.checkpoint) re-shard by themselves and pass."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    saved = zero_checkpoint_world_size(checkpoint)
    if saved is None or saved == world:
        return
    plural = lambda n: f"{n} process" + ("es" if n != 1 else "")  # noqa: E731
    raise ShardedCheckpointError(
        f"{checkpoint}: a DeepSpeed ZeRO checkpoint saved by {plural(saved)}, but this run has {plural(world)}; "
        "DeepSpeed cannot re-partition its optimizer state to another world size. "
        f"Resume with {plural(saved)} (torchrun --nproc_per_node {saved} ...), or consolidate the weights "
        f"(python {Path(checkpoint) / 'zero_to_fp32.py'} {checkpoint} OUT_DIR --safe_serialization) and start a new run from them"
    )


class FSDPUnavailable(GeoVLError, ValueError):
    """FSDP asked for where accelerate cannot run it."""


def check_fsdp(fsdp, cuda: bool | None = None) -> None:
    """Refuse ``fsdp`` where it would not shard, before anything loads (a missing or broken ``fsdp_config`` file is
    refused earlier, when the recipe is built: :func:`read_fsdp_config_file`).

    accelerate (1.15) turns FSDP on only for GPU-like devices: on a CPU it leaves the run as plain multi-process DDP
    without a word (checked here: the FSDP plugin is dropped and every rank holds all weights), so a recipe asking
    for FSDP on a CPU is refused instead of silently training something else."""
    if not fsdp:
        return
    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        raise FSDPUnavailable(
            f"fsdp={fsdp}: FSDP needs GPUs — accelerate enables it only on CUDA (and other accelerator) devices and on a "
            "CPU would silently train plain DDP instead. Remove fsdp/fsdp_config on this machine, or shard with "
            "DeepSpeed, which runs on CPUs too: deepspeed=recipes/deepspeed/zero3.json"
        )


def read_fsdp_config_file(fsdp_config: str | Path) -> dict:
    """The mapping in an ``fsdp_config`` JSON file; a missing, unreadable or non-mapping file is refused naming it
    (a recipe checks it when it is built, before transformers opens it and before anything loads)."""
    import json

    path = Path(fsdp_config)
    if not path.is_file():
        raise FSDPUnavailable(f"fsdp_config={path}: file not found (the shipped one: recipes/fsdp/fsdp2.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FSDPUnavailable(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise FSDPUnavailable(f"{path}: an FSDP config must be a JSON object {{key: value}}, got {type(cfg).__name__}")
    return cfg
