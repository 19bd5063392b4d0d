"""``geovl merge --base M --adapter A --out DIR``: one self-contained model folder for serving.

- A LoRA/DoRA run (``A`` holds ``adapter_config.json`` + ``adapter_model.safetensors``): load the
  base with the stock classes, load the adapter with peft, and check that **every tensor of the
  adapter file was used** — the keys peft expects for this adapter config must equal the file's
  keys, and the loaded values must equal the file's values. Missing or unexpected keys (an adapter
  for another base, a tampered or truncated file) raise :class:`MergeError` naming them; nothing is
  dropped silently. Then ``merge_and_unload`` folds LoRA into the base weights and puts the trained
  ``modules_to_save`` (e.g. the merger) in place.
- A full fine-tuning run (``A`` holds ``config.json`` + safetensors weights): load it, check that its
  tensors match the base architecture exactly (no missing / unexpected / reshaped tensors), re-save.

The output folder holds safetensors weights, ``config.json``, ``generation_config.json``, the
processor (tokenizer, image/video processor, chat template) and ``geovl_preprocess.json`` — what stock
``AutoModelForImageTextToText`` / ``AutoProcessor`` and vLLM load — plus ``geovl_merge.json`` (what
was merged). A spectral run's projector (``spectral_projector.*``) is kept beside the weights; how a
merged model takes N-band input is in docs/spectral.md. It is written to a temporary sibling
(``.OUT.geovl-merge-XXXX``, locked while the merge runs) and moved into place, so a failure leaves nothing
half-written: an error, Ctrl-C or SIGTERM removes the folder, and the temporary folders of earlier merges into
the same ``OUT`` that were killed outright (kill -9) are removed by the next merge. Damaged files (weights,
adapter, configs) and a full disk are one-line errors naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import GeoVLError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MERGE_INFO = "geovl_merge.json"


class MergeError(GeoVLError, ValueError):
    """An adapter / weights folder that cannot be merged into the given base (named, with the reason)."""


def _log(msg: str) -> None:
    from .log import get_logger

    get_logger("geovl.merge").info(msg)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def adapter_kind(folder: Path) -> str:
    """``"lora"`` (peft adapter folder) or ``"full"`` (full weights); MergeError otherwise."""
    if not folder.is_dir():
        raise MergeError(f"{folder}: adapter folder not found (give a run's final/ or checkpoint-N/ folder)")
    if (folder / ADAPTER_CONFIG).is_file():
        if not any((folder / f).is_file() for f in ADAPTER_FILES):
            raise MergeError(f"{folder}: has {ADAPTER_CONFIG} but no adapter_model.safetensors")
        return "lora"
    if (folder / "config.json").is_file() and (
        any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
    ):
        return "full"
    raise MergeError(
        f"{folder}: neither a LoRA adapter ({ADAPTER_CONFIG} + adapter_model.safetensors) nor full weights "
        "(config.json + *.safetensors); give the final/ or checkpoint-N/ folder of a `geovl train sft` run"
    )


def _adapter_family(folder: Path, kind: str) -> tuple[str | None, str]:
    """(registry key the adapter was trained for, where that came from) — None when unknown."""
    from .models.loading import ModelFolderError, read_family
    from .models.preprocess import PreprocessConfig

    try:
        pre = PreprocessConfig.load(folder)
    except ValueError:
        pre = None
    if pre is not None and pre.family:
        return pre.family, str(folder / "geovl_preprocess.json")
    if kind == "full":
        return read_family(folder).key, str(folder / "config.json")
    try:
        base_ref = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise MergeError(f"{folder / ADAPTER_CONFIG}: not valid JSON ({e})") from e
    if base_ref and Path(base_ref).is_dir():
        try:
            return read_family(base_ref).key, f"{folder / ADAPTER_CONFIG} (base_model_name_or_path {base_ref})"
        except ModelFolderError:
            pass
    return None, ""


def read_adapter_tensors(folder: Path) -> dict:
    import torch

    st = folder / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise MergeError(f"{st}: not a readable safetensors file ({e})") from e
    try:
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged zip / pickle
        raise MergeError(
            f"{folder / 'adapter_model.bin'}: not a readable adapter file ({str(e).strip().splitlines()[0][:300]})"
        ) from e


def _resolve_dtype(dtype: str, base: Path):
    import torch

    if dtype == "auto":
        cfg = json.loads((base / "config.json").read_text())
        name = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype") or "float32"
        return getattr(torch, str(name).replace("torch.", ""), torch.float32)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def merge_lora(base_model, adapter: Path):
    """``(merged model, report)``: base + peft adapter with every adapter tensor accounted for."""
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    file_sd = read_adapter_tensors(adapter)
    try:
        json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MergeError(f"{adapter / ADAPTER_CONFIG}: not valid JSON ({e})") from e
    try:
        peft_model = PeftModel.from_pretrained(base_model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        what = (
            f"tensor {e} is expected by the adapter but missing"
            if isinstance(e, KeyError)
            else str(e).strip().splitlines()[0][:500]
        )
        raise MergeError(
            f"{adapter}: the adapter does not fit this base model ({what}); merge it with the base it was trained on"
        ) from e
    loaded = get_peft_model_state_dict(peft_model)
    missing = set(loaded) - set(file_sd)  # the adapter config asks for them, the file lacks them
    unexpected = set(file_sd) - set(loaded)  # in the file, used by nothing
    if missing or unexpected:
        parts = []
        if unexpected:
            parts.append(
                f"{len(unexpected)} tensor(s) in the adapter file match nothing in the base model: {_names(unexpected)}"
            )
        if missing:
            parts.append(f"{len(missing)} tensor(s) the adapter config needs are not in the file: {_names(missing)}")
        raise MergeError(
            f"{adapter}: "
            + "; ".join(parts)
            + ". The adapter was made for a different base model, or the file is damaged; "
            "merge it with the base it was trained on (see the run's recipe.yaml)."
        )
    differ = [
        k
        for k, v in file_sd.items()
        if not torch.equal(loaded[k].detach().to("cpu", torch.float32), v.to(torch.float32))
    ]
    if differ:
        raise MergeError(
            f"{adapter}: {len(differ)} adapter tensor(s) did not load with their file values: {_names(differ)}"
        )
    n_lora = sum(1 for k in file_sd if ".lora_" in k)
    merged = peft_model.merge_and_unload()
    left = [n for n, _ in merged.named_modules() if "lora_" in n.split(".")[-1] or n.endswith("modules_to_save")]
    if left:  # pragma: no cover - peft guarantees this; a cheap safety net
        raise MergeError(f"{adapter}: peft left adapter modules in the merged model: {_names(left)}")
    report = {"adapter_tensors": len(file_sd), "lora_tensors": n_lora, "modules_to_save_tensors": len(file_sd) - n_lora}
    return merged, report


def load_full(weights: Path, base: Path, dtype):
    """Full fine-tuned weights, checked tensor by tensor against the base architecture."""
    from transformers import AutoModelForImageTextToText

    from .models.loading import load_weights

    try:
        model, info = load_weights(weights, AutoModelForImageTextToText, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise MergeError(f"{weights}: cannot load the weights ({str(e).splitlines()[0][:500]})") from e
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise MergeError(
            f"{weights}: the weights do not match their own config: "
            + "; ".join(f"{k}: {_names(map(str, v))}" for k, v in bad.items())
        )
    base_shapes = _meta_shapes(base)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    absent = set(base_shapes) - set(own)
    extra = set(own) - set(base_shapes)
    reshaped = [k for k in set(base_shapes) & set(own) if base_shapes[k] != own[k]]
    if absent or extra or reshaped:
        raise MergeError(
            f"{weights}: not a fine-tune of {base}: "
            + (f"base tensors absent here: {_names(absent)}; " if absent else "")
            + (f"tensors the base does not have: {_names(extra)}; " if extra else "")
            + (f"different shapes: {_names(reshaped)}" if reshaped else "")
        )
    return model, {"tensors": len(own)}


def _meta_shapes(folder: Path) -> dict[str, tuple]:
    """Parameter names and shapes of the model a folder's config describes (built on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        m = AutoModelForImageTextToText.from_config(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _check_saved(folder: Path, model) -> None:
    """Every tensor of the merged model is in the saved safetensors files (tied weights once).

    transformers may rename keys on save (checkpoint layout ≠ module tree), so the check compares
    the multiset of tensor shapes and the total element count rather than names."""
    from collections import Counter

    from safetensors import safe_open

    saved: Counter = Counter()
    for f in folder.glob("model*.safetensors"):  # not spectral_projector.safetensors
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                saved[tuple(sf.get_slice(k).get_shape())] += 1
    unique, seen = Counter(), set()
    for v in model.state_dict().values():
        if v.data_ptr() in seen and v.numel():
            continue  # a tied weight is saved once
        seen.add(v.data_ptr())
        unique[tuple(v.shape)] += 1
    if saved != unique:  # pragma: no cover - would be a transformers bug
        raise MergeError(
            f"{folder}: saved weights differ from the merged model (shapes {dict(unique - saved)} missing, {dict(saved - unique)} extra)"
        )


def _settle_tied_embeddings(model, base_tied: bool) -> str | None:
    """Make ``tie_word_embeddings`` true to the merged weights when the base ties them (Qwen2.5-VL-3B does).

    peft trains ``embed_tokens`` and ``lm_head`` as two separate copies; after merging they are two
    tensors. Still equal → tie them again (the base's layout). Diverged → untie in every config, or a
    loader that honours the flag (vLLM) would silently replace the trained lm_head."""
    import torch

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    cfgs = [c for c in (model.config, getattr(model.config, "text_config", None)) if c is not None]
    if not base_tied or head is None:
        return None
    same = emb.weight.data_ptr() == head.weight.data_ptr() or torch.equal(emb.weight, head.weight)
    for c in cfgs:
        c.tie_word_embeddings = same
    if same:
        head.weight = emb.weight
        return "tied"
    _log("embed_tokens and lm_head were trained apart: the merged config unties them (tie_word_embeddings=false)")
    return "untied"


def _load_processor(folder: Path):
    from transformers import AutoProcessor, ProcessorMixin

    try:
        proc = AutoProcessor.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise MergeError(f"{folder}: cannot load its processor ({str(e).splitlines()[0][:300]})") from e
    if not isinstance(proc, ProcessorMixin) or getattr(proc, "image_processor", None) is None:
        raise MergeError(f"{folder}: AutoProcessor loaded only {type(proc).__name__}, not an image-text processor")
    return proc


def merge(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Merge ``adapter`` (a LoRA run folder or full weights) into ``base``; write ``out``. Returns a report."""
    from transformers import AutoModelForImageTextToText

    from .models.loading import load_processor, load_weights, read_family
    from .models.preprocess import PreprocessConfig

    base, adapter, out = Path(base), Path(adapter), Path(out)
    family = read_family(base)  # ModelFolderError for a missing / foreign base
    kind = adapter_kind(adapter)
    trained_for, where = _adapter_family(adapter, kind)
    if trained_for is not None and trained_for != family.key:
        raise MergeError(
            f"{adapter}: trained for {trained_for} (per {where}) but the base {base} is {family.key} ({family.display}); "
            "give the base model the adapter was trained on"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MergeError(f"{out}: exists and is not empty; choose another --out or pass --force")
    if out.resolve() in (base.resolve(), adapter.resolve()):
        raise MergeError(f"{out}: --out must differ from --base and --adapter")
    torch_dtype = _resolve_dtype(dtype, base)
    base_cfg = json.loads((base / "config.json").read_text())
    base_tied = bool(
        base_cfg.get("tie_word_embeddings") or (base_cfg.get("text_config") or {}).get("tie_word_embeddings")
    )

    if kind == "lora":
        _log(f"loading base {base} ({family.display}, {str(torch_dtype).replace('torch.', '')}) …")
        try:
            base_model = load_weights(base, AutoModelForImageTextToText, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise MergeError(f"{base}: cannot load the base model ({str(e).splitlines()[0][:500]})") from e
        _log(f"applying adapter {adapter} …")
        model, report = merge_lora(base_model, adapter)
    else:
        _log(f"{adapter} holds full weights: validating them against {base} …")
        model, report = load_full(adapter, base, torch_dtype)
    model.eval()
    report["embeddings"] = _settle_tied_embeddings(model, base_tied)

    # the run saved the processor it trained with (pixel bounds, chat template); else the base's
    proc_src = (
        adapter
        if (adapter / "processor_config.json").is_file() or (adapter / "preprocessor_config.json").is_file()
        else base
    )
    processor = _load_processor(proc_src) if proc_src == adapter else load_processor(base)
    pre = PreprocessConfig.load(adapter) or PreprocessConfig.load(base)
    if pre is None:
        lo, hi = PreprocessConfig.bounds_of(processor)
        pre = PreprocessConfig(min_pixels=lo, max_pixels=hi, family=family.key)
    pre.apply(processor)

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(out):
        _log(f"removed {stale}: the temporary folder of an earlier merge that was killed")
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), dir=out.parent))
    lock = _hold_lock(tmp)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if (
            not (tmp / "chat_template.jinja").is_file() and not (tmp / "chat_template.json").is_file()
        ):  # pragma: no cover
            raise MergeError(f"{proc_src}: the processor has no chat template; vLLM and AutoProcessor need one")
        _check_saved(tmp, model)
        vision = _export_vision_input(tmp, pre, adapter, base)
        pre.save(tmp)
        info = {
            "base": str(base.resolve()),
            "adapter": str(adapter.resolve()),
            "kind": kind,
            "family": family.key,
            "dtype": str(torch_dtype).replace("torch.", ""),
            "processor_from": str(proc_src),
            **report,
            "vision_input": pre.vision_input,
            "spectral_projector": vision,  # what the vision input kept beside the weights (the key name predates other kinds)
        }
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n")
        _release_lock(tmp, lock)
        lock = None
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:  # a full disk, a read-only folder: one line naming the file; nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise MergeError(
            f"{e.filename or tmp}: {e.strerror or str(e).strip().splitlines()[0]}; nothing was written to {out}"
        ) from e
    except BaseException:  # also KeyboardInterrupt and SIGTERM (see run)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return info


TMP_TAG = ".geovl-merge-"
LOCK_FILE = ".geovl-merge.lock"


def _tmp_prefix(out: Path) -> str:
    """Temporary folders of a merge into ``out``: hidden siblings ``.NAME.geovl-merge-XXXX``."""
    return f".{out.name}{TMP_TAG}"


def _hold_lock(tmp: Path) -> int:
    """An exclusive ``flock`` on ``tmp/.geovl-merge.lock`` for as long as this merge runs; the kernel releases it
    when the process ends in any way (kill -9 too), which is how a later merge tells a stale folder from a live one."""
    import fcntl

    fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _release_lock(tmp: Path, fd: int) -> None:
    (tmp / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


def remove_stale_temps(out: Path, min_age_s: float = 60.0) -> list[Path]:
    """Remove the temporary folders of earlier merges into ``out`` whose process is gone (killed, machine lost):
    their lock is free. A folder whose merge still runs is left alone; so is one younger than ``min_age_s`` that
    has no lock file yet (a merge that is just starting). Returns the removed folders."""
    import fcntl
    import time

    prefix = _tmp_prefix(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for d in out.parent.iterdir():
        if not d.name.startswith(prefix) or not d.is_dir() or d.is_symlink():
            continue
        try:
            fd = os.open(d / LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            if time.time() - d.stat().st_mtime < min_age_s:
                continue
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a merge in progress
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        removed.append(d)
    return removed


def _export_vision_input(tmp: Path, pre, adapter: Path, base: Path) -> dict | None:
    """The model's vision input (chosen by the adapter folder, else the base) keeps its files beside the merged
    weights (validated by loading them, e.g. a spectral run's projector), and the preprocessing config records it
    so every geovl inference path feeds the same input (docs/spectral.md)."""
    from .models.vision_input import VisionInputError, resolve

    try:
        cls, src = resolve(adapter, base)
        kept = cls.export(src, tmp, pre)
    except VisionInputError as e:
        raise MergeError(str(e)) from None
    if kept:
        _log(f"{cls.kind} vision input from {src}: {kept}, kept beside the weights")
    return kept
