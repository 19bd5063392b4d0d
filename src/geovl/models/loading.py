"""Load a model folder (tiny, downloaded, or exported) with the stock transformers classes.

``read_family(path)`` only reads ``config.json`` (no torch import) and tells which registry family
the folder is. ``load_model_folder(path)`` returns ``(model, processor, family)`` (with a spectral projector attached
when the folder has one) and refuses
folders that stock tools could not use either: a missing/garbled ``config.json``, an unsupported
``model_type``, or a processor that ``AutoProcessor`` can only load as a bare tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import GeoVLError
from .registry import Family, get_family


class ModelFolderError(GeoVLError, ValueError):
    """A model folder that cannot be used (named in the message with what is wrong)."""


def read_config(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a model folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder not found / 模型目录不存在")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelFolderError(f"{folder}: no config.json — not a Hugging Face model folder / 缺少 config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ModelFolderError(f"{cfg_path}: expected a JSON object")
    return cfg


def read_family(path: str | os.PathLike) -> Family:
    """The registry family of a model folder, from ``config.json``'s ``model_type``."""
    cfg = read_config(path)
    if "model_type" not in cfg:
        raise ModelFolderError(f"{Path(path) / 'config.json'}: no model_type")
    try:
        return get_family(cfg["model_type"])
    except ValueError as e:
        raise ModelFolderError(f"{path}: {e}") from e


def load_processor(path: str | os.PathLike):
    """``AutoProcessor.from_pretrained`` that insists on a real multimodal processor."""
    from transformers import AutoProcessor, ProcessorMixin

    read_family(path)
    try:
        proc = AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFolderError(f"{path}: cannot load the processor / 无法加载处理器: {first}") from e
    if not isinstance(proc, ProcessorMixin) or getattr(proc, "image_processor", None) is None:
        raise ModelFolderError(
            f"{path}: AutoProcessor loaded only {type(proc).__name__}, not an image-text processor; "
            "the folder needs processor_config.json (or preprocessor_config.json) naming a stock processor class"
        )
    return proc


def damaged_file(path: str | os.PathLike) -> str | None:
    """``"FILE: what is wrong"`` for the first unreadable weights file of a model folder (a truncated or
    garbled safetensors file, a broken index), or None when they all read."""
    folder = Path(path)
    for f in sorted(folder.glob("*.index.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"{f}: not a readable index ({e})"
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as sf:
                for k in sf.keys():
                    sf.get_slice(k)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            return f"{f}: not a readable safetensors file ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    return None


def load_weights(path: str | os.PathLike, cls=None, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` (default ``AutoModelForImageTextToText``); a folder whose weights
    cannot be loaded is a one-line :class:`ModelFolderError` naming the damaged file (or the folder and the reason)."""
    if cls is None:
        from transformers import AutoModelForImageTextToText as cls
    try:
        return cls.from_pretrained(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - transformers / safetensors / torch raise many types for a damaged folder
        where = damaged_file(path)
        if where is None:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            where = f"{path}: cannot load the model weights / 无法加载模型权重 ({first})"
        raise ModelFolderError(where) from e


def load_model_folder(path: str | os.PathLike, dtype=None, device: str = "cpu"):
    """``(model, processor, family)`` from a folder, with the stock Auto classes; model in eval mode."""
    import torch
    from transformers import AutoModelForImageTextToText

    family = read_family(path)
    processor = load_processor(path)
    model = load_weights(path, AutoModelForImageTextToText, dtype=dtype or torch.float32)
    model.to(device).eval()
    from .vision_input import load

    load(
        model, family, processor, path
    )  # the folder's vision input (e.g. a spectral projector saved beside the weights)
    return model, processor, family
