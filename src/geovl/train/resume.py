"""Resume a training run from a ``checkpoint-N/`` folder with every saved tensor restored — or refuse.

Why this module exists: ``save_pretrained`` writes weights in the checkpoint layout of the original
model release (for Qwen2-VL / Qwen2.5-VL ``model.layers.*`` and ``visual.*``: transformers reverts its
weight-conversion mapping on save), while the module tree is ``model.language_model.*`` /
``model.visual.*``. ``transformers.Trainer._load_from_checkpoint`` reads the file and calls
``load_state_dict(strict=False)`` without that mapping, so a full fine-tuning resume loaded none of the
weights and only logged a warning. Here:

- full weights are read back the way the model loads them everywhere else (``from_pretrained``, which
  applies the conversion mapping), then copied into the training model strictly: a tensor of the file
  that fits nothing, or a model tensor the file lacks, is an error naming them;
- a LoRA / DoRA adapter (LLM or vision tower, with ``modules_to_save``) is loaded by the Trainer (peft)
  and then checked: the adapter tensors of the model must be exactly the file's tensors, with the file's
  values;
- a damaged file (truncated safetensors, corrupt ``optimizer.pt``, garbled ``trainer_state.json``) is a
  one-line :class:`ResumeError` naming the file.

The model's vision input (e.g. a spectral projector) keeps its tensors out of the model's state dict and is
restored separately (strictly) from its own files by :class:`geovl.train.trainer.ResumeChecks`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GeoVLError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


class ResumeError(GeoVLError, RuntimeError):
    """A checkpoint that cannot be resumed exactly (named, with what is missing or damaged)."""


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def has_full_weights(folder: str | Path) -> bool:
    folder = Path(folder)
    return not (folder / ADAPTER_FILE).is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


def restore_full_weights(model, folder: str | Path) -> int:
    """Copy every tensor of ``folder``'s full weights into ``model`` (in place); returns how many.

    Raises :class:`ResumeError` naming the file and the tensors when the file and the model differ in any
    tensor name or shape, or when the file cannot be read."""
    import torch

    folder = Path(folder)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), folder)
    from ..models.loading import damaged_file

    damaged = damaged_file(folder)
    if damaged:
        raise ResumeError(damaged)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would repeat, as a warning, what is refused below
    try:
        saved, info = type(model).from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - transformers / safetensors raise many types for a damaged folder
        raise ResumeError(f"{weights}: cannot load the checkpoint weights ({_first_line(e)})") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ResumeError(
            f"{weights}: the checkpoint does not match the model being trained ("
            + "; ".join(f"{k.replace('_', ' ')}: {_names(map(str, v))}" for k, v in bad.items())
            + "); resume only with the recipe and model that wrote it"
        )
    own = model.state_dict()  # without a vision input's tensors (restored from its own files)
    src = saved.state_dict()
    missing = set(own) - set(src)
    unexpected = set(src) - set(own)
    reshaped = [k for k in set(own) & set(src) if tuple(own[k].shape) != tuple(src[k].shape)]
    if missing or unexpected or reshaped:
        raise ResumeError(
            f"{weights}: the checkpoint does not match the model being trained ("
            + "; ".join(
                part
                for part in (
                    f"model tensors not in the checkpoint: {_names(missing)}" if missing else "",
                    f"checkpoint tensors the model does not have: {_names(unexpected)}" if unexpected else "",
                    f"different shapes: {_names(reshaped)}" if reshaped else "",
                )
                if part
            )
            + ")"
        )
    result = model.load_state_dict(src, strict=False)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - ruled out by the key check above
        raise ResumeError(
            f"{weights}: tensors not restored: {_names(set(result.missing_keys) | set(result.unexpected_keys))}"
        )
    del saved, src
    return len(own)


def check_adapter_restored(model, folder: str | Path) -> int:
    """After the Trainer (peft) loaded an adapter checkpoint: the model's adapter tensors are exactly the
    file's tensors with the file's values; returns how many. :class:`ResumeError` otherwise."""
    import torch
    from peft.utils import get_peft_model_state_dict

    path = Path(folder) / ADAPTER_FILE
    file_sd = read_safetensors(path)
    loaded = get_peft_model_state_dict(model)
    missing = set(loaded) - set(file_sd)
    unexpected = set(file_sd) - set(loaded)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"adapter tensors of the model not in the file: {_names(missing)}")
        if unexpected:
            parts.append(f"tensors in the file that fit nothing in the model: {_names(unexpected)}")
        raise ResumeError(f"{path}: the checkpoint does not match the adapter being trained ({'; '.join(parts)})")
    differ = [k for k, v in file_sd.items() if not torch.equal(loaded[k].detach().to("cpu", v.dtype), v)]
    if differ:
        raise ResumeError(f"{path}: {len(differ)} tensor(s) did not load with their saved values: {_names(differ)}")
    return len(file_sd)


def read_safetensors(path: str | Path) -> dict:
    """All tensors of a safetensors file; :class:`ResumeError` naming it when it is missing or damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ResumeError(f"{path}: not a readable safetensors file ({_first_line(e)})") from e


def check_state_files(folder: str | Path, names: tuple[str, ...] = STATE_FILES) -> None:
    """The trainer state of a checkpoint reads: ``trainer_state.json`` is JSON, the torch files open (memory-mapped:
    their structure is read, not their tensor data, so a large ``optimizer.pt`` costs little).

    Checked before resuming, to name a damaged file (the Trainer's own error does not)."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    folder = Path(folder)
    for name in names:
        f = folder / name
        if not f.is_file():
            continue
        try:
            if f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
            else:
                with safe_globals():  # the RNG state holds numpy arrays, as the Trainer allows when it loads it
                    torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001
            raise ResumeError(
                f"{f}: damaged checkpoint file ({_first_line(e)}); resume from an earlier checkpoint-N "
                "(delete this one) or start over"
            ) from e


def check_checkpoint(folder: str | Path, model, world_size: int = 1, rank: int = 0) -> None:
    """Before resuming from ``folder``: its state files read (:func:`check_state_files`, with this process's
    RNG file) and it holds what ``model`` trains — a LoRA adapter for a peft model, full weights otherwise;
    :class:`ResumeError` naming the folder or file otherwise."""
    from peft import PeftModel

    folder = Path(folder)
    rng = (f"rng_state_{rank}.pth",) if world_size > 1 else ()
    check_state_files(folder, STATE_FILES + rng)
    if isinstance(model, PeftModel):
        if not (folder / ADAPTER_FILE).is_file():
            held = "full weights" if has_full_weights(folder) else f"no {ADAPTER_FILE}"
            raise ResumeError(f"{folder}: holds {held}, but the recipe trains a LoRA adapter")
    elif (folder / ADAPTER_FILE).is_file():
        raise ResumeError(f"{folder / ADAPTER_FILE}: a LoRA adapter checkpoint, but the recipe trains full weights")
