"""Which folders an engine loads, and attaching a peft adapter with clear mismatch errors.

- ``resolve_folders(model, adapter)``: ``--model`` may also be an adapter folder (a LoRA run's
  ``final/``); its base model is then read from ``adapter_config.json``.
- ``attach_adapter``: refuses an adapter made for another base model, naming both — from the
  family recorded by training (``geovl_preprocess.json``), the recorded base model's config, peft's
  own target/shape checks, and the missing/unexpected adapter keys after loading.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..models.loading import ModelFolderError, read_config
from ..models.preprocess import PreprocessConfig

ADAPTER_CONFIG = "adapter_config.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(adapter: Path) -> dict:
    p = adapter / ADAPTER_CONFIG
    if not adapter.is_dir():
        raise ModelFolderError(f"{adapter}: adapter folder not found / 适配器目录不存在")
    if not p.is_file():
        raise ModelFolderError(f"{adapter}: no {ADAPTER_CONFIG} — not a peft adapter folder / 不是 peft 适配器目录")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ModelFolderError(f"{p}: expected a JSON object")
    return cfg


def resolve_folders(model: str | Path, adapter: str | Path | None) -> tuple[Path, Path | None]:
    """(base model folder, adapter folder or None)."""
    model = Path(model)
    if adapter is None and is_adapter_folder(model) and not (model / "config.json").is_file():
        base = read_adapter_config(model).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ModelFolderError(
                f"{model} is an adapter folder whose base model {base!r} is not a local folder; "
                f"pass the base model with --model BASE --adapter {model}"
            )
        return Path(base), model
    return model, Path(adapter) if adapter is not None else None


def has_processor(folder: Path) -> bool:
    return any((folder / f).is_file() for f in PROCESSOR_FILES)


def preprocess_for(model_dir: Path, adapter_dir: Path | None) -> PreprocessConfig | None:
    """The preprocessing config of the adapter folder if it has one, else the model folder's."""
    if adapter_dir is not None:
        pre = PreprocessConfig.load(adapter_dir)
        if pre is not None:
            return pre
    return PreprocessConfig.load(model_dir)


def _signature(cfg: dict) -> dict:
    text = cfg.get("text_config") or cfg
    vision = cfg.get("vision_config") or {}
    return {
        "model_type": cfg.get("model_type"),
        "hidden_size": text.get("hidden_size"),
        "layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size", cfg.get("vocab_size")),
        "vision_depth": vision.get("depth"),
        "vision_hidden": vision.get("hidden_size", vision.get("embed_dim")),
    }


def _describe(sig: dict) -> str:
    return (
        f"{sig['model_type']} (hidden {sig['hidden_size']}, {sig['layers']} layers, vocab {sig['vocab_size']}, "
        f"vision depth {sig['vision_depth']})"
    )


def _mismatch(adapter: Path, made_for: str, model_dir: Path, model_desc: str, detail: str) -> ModelFolderError:
    return ModelFolderError(
        f"adapter {adapter} was made for {made_for}, but --model {model_dir} is {model_desc}: {detail}. "
        "Pass the base model the adapter was trained on / 适配器与基础模型不匹配"
    )


def check_adapter_matches(model_dir: Path, adapter_dir: Path, family) -> dict:
    """Checks that need no weights. Returns the adapter config."""
    acfg = read_adapter_config(adapter_dir)
    model_sig = _signature(read_config(model_dir))
    base = acfg.get("base_model_name_or_path") or "an unrecorded base model"
    pre = PreprocessConfig.load(adapter_dir)
    if pre is not None and pre.family and pre.family != family.key:
        raise _mismatch(
            adapter_dir, f"{base} (family {pre.family})", model_dir, f"family {family.key}", "different model family"
        )
    base_cfg = Path(str(base)) / "config.json"
    if base_cfg.is_file() and Path(str(base)).resolve() != model_dir.resolve():
        try:
            base_sig = _signature(json.loads(base_cfg.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            base_sig = None
        if base_sig is not None and base_sig != model_sig:
            diff = ", ".join(f"{k} {base_sig[k]} vs {model_sig[k]}" for k in model_sig if base_sig[k] != model_sig[k])
            raise _mismatch(adapter_dir, f"{base} = {_describe(base_sig)}", model_dir, _describe(model_sig), diff)
    return acfg


def _peft_reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"the model has no weight {e.args[0] if e.args else ''} that the adapter holds"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else type(e).__name__)
    extra = sum(1 for ln in lines if "size mismatch" in ln) - 1
    return pick[:400] + (f" (+{extra} more size mismatches)" if extra > 0 else "")


def attach_adapter(model, model_dir: Path, adapter_dir: Path, family):
    """``PeftModel.from_pretrained`` with the checks above and an exact key comparison afterwards."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    acfg = check_adapter_matches(model_dir, adapter_dir, family)
    base = acfg.get("base_model_name_or_path") or "an unrecorded base model"
    model_desc = _describe(_signature(read_config(model_dir)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing keys are checked exactly below
            pm = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, target modules not found, ...
        raise _mismatch(
            adapter_dir, str(base), model_dir, model_desc, f"peft could not load it ({_peft_reason(e)})"
        ) from e
    saved = set(load_peft_weights(str(adapter_dir), device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not find a config file in <base>": we only need the key names
        expected = set(get_peft_model_state_dict(pm))
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} adapter weights missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected adapter weights (e.g. {unexpected[0]})")
        raise _mismatch(adapter_dir, str(base), model_dir, model_desc, "; ".join(detail))
    return pm
