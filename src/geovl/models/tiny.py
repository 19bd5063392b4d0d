"""Tiny random models of the real Qwen-VL architectures, built offline.

:func:`build_tiny` writes a standard Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files, ``chat_template.jinja``, processor and image/video
processor configs) that the *stock* ``AutoModelForImageTextToText`` and ``AutoProcessor`` load,
exactly like a downloaded Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint — only with a few hundred
thousand random parameters. Tests, demos and CI use these; nothing comes from a model hub.

Same arguments and seed → bit-identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import GeoVLError
from .registry import Family, get_family

# processor / video-processor / config class names per family (transformers 5.x)
_CLASSES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}
VISION_WIDTH = 32  # vision tower width; the merger projects to the LLM width
VISION_HEADS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
META_FILE = "geovl_tiny.json"


class TinyModelError(GeoVLError, ValueError):
    """Bad arguments for a tiny model (size, pixel bounds, output folder)."""


def default_pixel_bounds(family: Family) -> tuple[int, int]:
    """Small pixel bounds for tiny models: (2·factor)² … (16·factor)²,
    i.e. 56²…448² for patch 14 (4…256 image tokens) and 64²…512² for Qwen3-VL's patch 16."""
    f = family.factor
    return (2 * f) ** 2, (16 * f) ** 2


def mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension (sums to head_dim/2)."""
    half = head_dim // 2
    hw = half // 4
    return [half - 2 * hw, hw, hw]


def _check_sizes(hidden: int, layers: int, vision_depth: int) -> None:
    if hidden < 32 or hidden % 32:
        raise TinyModelError(f"--hidden must be a multiple of 32 and at least 32, got {hidden}")
    if layers < 1:
        raise TinyModelError(f"--layers must be at least 1, got {layers}")
    if vision_depth < 1:
        raise TinyModelError(f"--vision-depth must be at least 1, got {vision_depth}")


def _vision_config(family: Family, hidden: int, depth: int) -> dict:
    common = dict(
        depth=depth,
        num_heads=VISION_HEADS,
        patch_size=family.patch_size,
        spatial_merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
        in_channels=3,
    )
    if family.key == "qwen2_vl":
        return dict(common, embed_dim=VISION_WIDTH, hidden_size=hidden, mlp_ratio=2)
    vis = dict(common, hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, out_hidden_size=hidden)
    if family.key == "qwen2_5_vl":
        # windows of 4×4 merged patches; full attention every 8th block and in the last one
        full = sorted({i for i in range(depth) if i % 8 == 7} | {depth - 1})
        return dict(vis, window_size=family.factor * 4, fullatt_block_indexes=full)
    if family.key == "qwen3_vl":
        k = min(3, depth - 1)
        deepstack = sorted({round((j + 1) * depth / (k + 1)) - 1 for j in range(k)})
        return dict(vis, num_position_embeddings=64, deepstack_visual_indexes=deepstack)
    raise TinyModelError(f"no tiny recipe for family {family.key}")  # pragma: no cover


def tiny_config(family: Family, tokenizer, hidden: int = 64, layers: int = 2, vision_depth: int = 2, tie: bool = False):
    """The transformers config for a tiny model of ``family`` whose token ids come from ``tokenizer``."""
    import transformers

    _check_sizes(hidden, layers, vision_depth)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    head_dim = hidden // TEXT_HEADS
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=mrope_section(head_dim))
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=TEXT_HEADS,
        num_key_value_heads=TEXT_KV_HEADS,
        max_position_embeddings=4096,
        bos_token_id=None,  # Qwen has no BOS; the default 151643 lies outside a small vocab
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=tie,
        rope_parameters=rope,
    )
    if family.key == "qwen3_vl":
        text["head_dim"] = head_dim
        rope["mrope_interleaved"] = True
    config_cls = getattr(transformers, _CLASSES[family.key][0])
    cfg = config_cls(
        text_config=text,
        vision_config=_vision_config(family, hidden, vision_depth),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=tie,
    )
    if cfg.model_type != family.model_type:  # pragma: no cover - guards the class table
        raise RuntimeError(f"{config_cls.__name__} has model_type {cfg.model_type}, expected {family.model_type}")
    return cfg


def tiny_processor(family: Family, tokenizer, min_pixels: int | None = None, max_pixels: int | None = None):
    """The stock processor class of ``family`` with pixel bounds set as ``size`` (shortest/longest edge)."""
    import transformers

    lo_default, hi_default = default_pixel_bounds(family)
    lo = lo_default if min_pixels is None else int(min_pixels)
    hi = hi_default if max_pixels is None else int(max_pixels)
    if lo < family.factor**2:
        raise TinyModelError(
            f"min_pixels must be at least {family.factor}² = {family.factor**2} for {family.display}, got {lo}"
        )
    if hi < lo:
        raise TinyModelError(f"max_pixels ({hi}) must not be below min_pixels ({lo})")
    _, proc_name, video_name = _CLASSES[family.key]
    common = dict(
        patch_size=family.patch_size,
        merge_size=family.merge_size,
        temporal_patch_size=family.temporal_patch_size,
    )
    if family.key == "qwen3_vl":
        common.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = transformers.Qwen2VLImageProcessor(size={"shortest_edge": lo, "longest_edge": hi}, **common)
    # Qwen2/2.5-VL bound each video frame; Qwen3-VL bounds frames × pixels, so allow 16 full frames.
    # cap_pixels_per_frame=True: the qwen-vl-utils total-video budget (transformers' future default).
    video_kw = dict(common, cap_pixels_per_frame=True)
    if family.key == "qwen3_vl":
        video_kw["size"] = {"shortest_edge": lo, "longest_edge": hi * 16}
    else:
        video_kw.update(size={"shortest_edge": lo, "longest_edge": hi}, max_video_tokens=2048)
    video_processor = getattr(transformers, video_name)(**video_kw)
    proc_cls = getattr(transformers, proc_name)
    return proc_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise TinyModelError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise TinyModelError(f"{out_dir} is not empty; choose another folder or pass --force to replace it")
            if not (out_dir / "config.json").is_file():  # --force replaces model folders, nothing else
                raise TinyModelError(f"refusing to replace {out_dir}: it is not a model folder (no config.json)")


def build_tiny(
    family: str,
    out_dir: str | os.PathLike,
    vocab: str = "small",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a tiny random ``family`` model and save a complete HF folder at ``out_dir``.

    ``family``: a CLI name (``qwen2.5-vl``) or model_type (``qwen2_5_vl``). ``vocab``: ``"small"``
    (offline BPE, ~800 tokens) or ``"qwen"`` (real Qwen vocabulary; embeddings are tied then).
    The folder is written to a temporary sibling and moved into place, so a failure leaves nothing
    half-written. Returns the folder path."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from .tokenizer import build_tokenizer

    fam = get_family(family)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    _check_sizes(hidden, layers, vision_depth)
    if vocab not in ("small", "qwen"):
        raise TinyModelError(f"unknown vocabulary {vocab!r}; use 'small' or 'qwen'")
    tokenizer = build_tokenizer(vocab)
    tie = vocab == "qwen"
    config = tiny_config(fam, tokenizer, hidden, layers, vision_depth, tie=tie)
    processor = tiny_processor(fam, tokenizer, min_pixels, max_pixels)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    end, im_end = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, end], pad_token_id=end, bos_token_id=None, do_sample=False
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary folder
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        meta = dict(
            family=fam.cli_name, model_type=fam.model_type, vocab=vocab, seed=seed, hidden=hidden, layers=layers,
            vision_depth=vision_depth, min_pixels=processor.image_processor.size["shortest_edge"],
            max_pixels=processor.image_processor.size["longest_edge"],
            parameters=sum(p.numel() for p in model.parameters()),
        )  # fmt: skip
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
