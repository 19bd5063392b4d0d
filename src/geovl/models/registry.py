"""The one model registry: a declarative table per Qwen-VL family.

Everything that needs to know a family's layout reads it from here: freezing, LoRA targets,
token budgets, the spectral projector. A family is chosen from ``config.model_type`` — never
from a path or a model name. A new family is one new :class:`Family` row in :data:`FAMILIES`.

Module-name patterns are regular expressions over ``model.named_modules()`` names of the
``*ForConditionalGeneration`` class in transformers 5.x (``model.visual``,
``model.language_model``, ``lm_head``). They are anchored with :func:`re.fullmatch`; match a
layer's sub-module by passing the pattern to peft as ``target_modules`` (a string is a regex
there too).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import GeoVLError

_N = r"\d+"


@dataclass(frozen=True)
class Family:
    key: str  # registry key, also config.model_type
    cli_name: str  # what users type: qwen2.5-vl
    display: str
    model_type: str
    patch_size: int
    merge_size: int  # spatial_merge_size
    temporal_patch_size: int
    # module-name regexes
    llm_layers: str
    llm_attn: tuple[str, ...]
    llm_mlp: tuple[str, ...]
    vision_blocks: str
    vision_attn: tuple[str, ...]
    vision_mlp: tuple[str, ...]
    merger: str  # every module that maps vision features into the LLM (incl. deepstack mergers)
    vision_embed: str
    embed_tokens: str
    lm_head: str
    vision_prefix: str = "model.visual"
    patch_embed: str = "model.visual.patch_embed"  # takes the flattened patch rows (where a spectral projector goes)
    llm_prefix: str = "model.language_model"
    default_min_pixels: int = 0
    default_max_pixels: int = 0
    # the stock video processor's defaults (size shortest/longest edge, max_video_tokens) and whether its
    # bounds are per frame (Qwen2/2.5-VL) or over all frames, t × h × w (Qwen3-VL)
    video_min_pixels: int = 0
    video_max_pixels: int = 0
    video_max_tokens: int = 128000
    video_bounds_per_frame: bool = True
    box_style: str = "abs_json"  # how the family writes boxes (geovl.models.box_format.STYLES)
    notes: str = ""
    hf_examples: tuple[str, ...] = field(default_factory=tuple)

    # ---- image-token maths -------------------------------------------------------------------
    def video_grid_thw(
        self,
        n_frames: int,
        height: int,
        width: int,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        *,
        cap_pixels_per_frame: bool = False,
        max_video_tokens: int | None = None,
    ) -> tuple[int, int, int]:
        """(t, h, w) patch grid the family's video processor makes of ``n_frames`` frames of height×width.

        ``min_pixels`` / ``max_pixels`` are the video processor's ``size`` (``shortest_edge`` /
        ``longest_edge``) exactly as it holds them — per frame for Qwen2/2.5-VL, over all frames
        (t × h × w) for Qwen3-VL; ``None``: the stock processor's default. ``cap_pixels_per_frame`` and
        ``max_video_tokens`` as set on the processor (:func:`video_bounds_of` reads all four from one).
        Mirrors ``Qwen2VLVideoProcessor.resize`` / ``Qwen3VLVideoProcessor.resize`` and ``patchify``
        (frames padded to a multiple of ``temporal_patch_size`` by repeating the last)."""
        if n_frames < 1:
            raise ValueError(f"a video needs at least one frame, got {n_frames}")
        lo = self.video_min_pixels if min_pixels is None else int(min_pixels)
        hi = self.video_max_pixels if max_pixels is None else int(max_pixels)
        mvt = self.video_max_tokens if max_video_tokens is None else int(max_video_tokens)
        f, tp = self.factor, self.temporal_patch_size
        if self.video_bounds_per_frame:
            if cap_pixels_per_frame:
                total = int(mvt * f * f * 0.9)
                hi = max(min(hi, total * tp // n_frames), int(lo * 1.05))
            h, w = smart_resize(height, width, f, lo, hi)
        else:
            if cap_pixels_per_frame:
                per_frame = max(min(mvt * f * f, hi // n_frames), int(lo * 1.05))
                hi = per_frame * n_frames
            h, w = _smart_resize_frames(n_frames, height, width, tp, f, lo, hi)
        t = (n_frames + -n_frames % tp) // tp
        return (t, h // self.patch_size, w // self.patch_size)

    def video_tokens(
        self,
        n_frames: int,
        height: int,
        width: int,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **bounds,
    ) -> int:
        """Visual tokens (``<|video_pad|>``) of one video: ``t · h · w / merge_size²`` of :meth:`video_grid_thw`."""
        t, h, w = self.video_grid_thw(n_frames, height, width, min_pixels, max_pixels, **bounds)
        return t * h * w // (self.merge_size**2)

    @property
    def factor(self) -> int:
        """Pixels per merged visual token along one side (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
        return self.patch_size * self.merge_size

    def resized_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """(height, width) the processor resizes to: Qwen's ``smart_resize``."""
        return smart_resize(
            height,
            width,
            self.factor,
            self.default_min_pixels if min_pixels is None else min_pixels,
            self.default_max_pixels if max_pixels is None else max_pixels,
        )

    def image_tokens(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> int:
        """Number of ``<|image_pad|>`` tokens one image of this size becomes."""
        h, w = self.resized_size(height, width, min_pixels, max_pixels)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size**2)

    def grid_thw(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int, int]:
        h, w = self.resized_size(height, width, min_pixels, max_pixels)
        return (1, h // self.patch_size, w // self.patch_size)

    # ---- boxes (geovl.models.box_format) ------------------------------------------------------------
    def box_frame(self, width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None):
        """The :class:`~geovl.models.box_format.BoxFrame` of a stored ``width`` × ``height`` image."""
        from .box_format import frame_for

        return frame_for(self, width, height, min_pixels, max_pixels)

    def render_boxes(
        self, boxes: list[dict], width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> str:
        """Boxes in stored-image pixels → the answer text this family is trained on."""
        from .box_format import render

        return render(self.box_frame(width, height, min_pixels, max_pixels), boxes)

    def parse_boxes(
        self, text, width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> list[dict] | None:
        """This family's output text → boxes in stored-image pixels (None: no box could be read)."""
        from .box_format import parse_text

        return parse_text(self.box_frame(width, height, min_pixels, max_pixels), text)

    # ---- module selection ----------------------------------------------------------------------
    def lora_targets(self, parts: tuple[str, ...] = ("llm",)) -> str:
        """One peft ``target_modules`` regex for the linear layers of the requested parts.

        ``parts`` ⊆ {"llm", "vision", "merger"}. Bare names such as ``q_proj`` would miss the vision
        tower or hit the wrong one; these regexes are anchored to each tower."""
        alts = []
        if "llm" in parts:
            alts += [rf"{self.llm_layers}\." + re.escape(m) for m in self.llm_attn + self.llm_mlp]
        if "vision" in parts:
            alts += [rf"{self.vision_blocks}\." + re.escape(m) for m in self.vision_attn + self.vision_mlp]
        if "merger" in parts:
            alts.append(rf"{self.merger}\..*")
        unknown = set(parts) - {"llm", "vision", "merger"}
        if unknown:
            raise ValueError(f"unknown model part(s) {sorted(unknown)}; use llm, vision, merger")
        return "(" + "|".join(alts) + ")"

    def part_of(self, param_or_module_name: str) -> str:
        """Which part a parameter/module belongs to: vision, merger, llm, embed, lm_head, spectral or other."""
        n = param_or_module_name.replace("base_model.model.", "", 1)
        if n.startswith("spectral_input."):  # geovl.spectral.vision_input.ATTR: the N-band → RGB projector
            return "spectral"
        if re.match(self.merger + r"(\.|$)", n):
            return "merger"
        if n.startswith(self.vision_prefix + "."):
            return "vision"
        if re.match(self.embed_tokens + r"(\.|$)", n):
            return "embed"
        if n.startswith(self.llm_prefix + "."):
            return "llm"
        if re.match(self.lm_head + r"(\.|$)", n):
            return "lm_head"
        return "other"


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's resize rule: both sides multiples of ``factor``, area within [min, max], aspect kept.

    Mirrors ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize`` step for step
    (so token counts match the real processor for every size and bound); where that rule would
    produce an empty side (only possible with ``min_pixels`` < 1) it raises instead."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if max_pixels and h_bar * w_bar > max_pixels:  # max_pixels 0 = no upper bound
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar == 0 or w_bar == 0:
        raise ValueError(
            f"a {height}x{width} image resizes to nothing with min_pixels={min_pixels}; use min_pixels >= {factor * factor}"
        )
    return h_bar, w_bar


def _smart_resize_frames(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL's video resize rule: the bounds hold for t × h × w; frames smaller than ``factor`` are
    first scaled up. Mirrors ``transformers.models.qwen3_vl.video_processing_qwen3_vl.smart_resize``
    (fewer frames than ``temporal_factor`` are refused, as there)."""
    if num_frames < temporal_factor:
        raise ValueError(f"{num_frames} frame(s): Qwen3-VL's video processor needs at least {temporal_factor}")
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


_LLM = rf"model\.language_model\.layers\.{_N}"
_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

FAMILIES: dict[str, Family] = {
    f.key: f
    for f in [
        Family(
            key="qwen2_vl",
            cli_name="qwen2-vl",
            display="Qwen2-VL",
            model_type="qwen2_vl",
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
            llm_layers=_LLM,
            llm_attn=_ATTN,
            llm_mlp=_MLP,
            vision_blocks=rf"model\.visual\.blocks\.{_N}",
            vision_attn=("attn.qkv", "attn.proj"),
            vision_mlp=("mlp.fc1", "mlp.fc2"),
            merger=r"model\.visual\.merger",
            vision_embed=r"model\.visual\.patch_embed",
            embed_tokens=r"model\.language_model\.embed_tokens",
            lm_head=r"lm_head",
            default_min_pixels=56 * 56,
            default_max_pixels=28 * 28 * 1280,
            video_min_pixels=128 * 28 * 28,
            video_max_pixels=28 * 28 * 768,
            box_style="qwen2",  # <|box_start|>(x1,y1),(x2,y2)<|box_end|>, 0-1000 grid
            hf_examples=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        ),
        Family(
            key="qwen2_5_vl",
            cli_name="qwen2.5-vl",
            display="Qwen2.5-VL",
            model_type="qwen2_5_vl",
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
            llm_layers=_LLM,
            llm_attn=_ATTN,
            llm_mlp=_MLP,
            vision_blocks=rf"model\.visual\.blocks\.{_N}",
            vision_attn=("attn.qkv", "attn.proj"),
            vision_mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
            merger=r"model\.visual\.merger",
            vision_embed=r"model\.visual\.patch_embed",
            embed_tokens=r"model\.language_model\.embed_tokens",
            lm_head=r"lm_head",
            default_min_pixels=56 * 56,
            default_max_pixels=28 * 28 * 1280,
            video_min_pixels=128 * 28 * 28,
            video_max_pixels=28 * 28 * 768,
            box_style="abs_json",  # {"bbox_2d": [...]} in pixels of the resized image
            hf_examples=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        ),
        Family(
            key="qwen3_vl",
            cli_name="qwen3-vl",
            display="Qwen3-VL",
            model_type="qwen3_vl",
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            llm_layers=_LLM,
            llm_attn=_ATTN,
            llm_mlp=_MLP,
            vision_blocks=rf"model\.visual\.blocks\.{_N}",
            vision_attn=("attn.qkv", "attn.proj"),
            vision_mlp=("mlp.linear_fc1", "mlp.linear_fc2"),
            # the deepstack mergers feed vision features into early LLM layers: they are mergers too
            merger=r"model\.visual\.(merger|deepstack_merger_list\.\d+)",
            vision_embed=r"model\.visual\.(patch_embed|pos_embed)",
            embed_tokens=r"model\.language_model\.embed_tokens",
            lm_head=r"lm_head",
            default_min_pixels=64 * 64,
            default_max_pixels=32 * 32 * 1280,
            video_min_pixels=128 * 32 * 32,
            video_max_pixels=32 * 32 * 768,
            video_max_tokens=768,
            video_bounds_per_frame=False,
            box_style="rel_json",  # {"bbox_2d": [...]} on a 0-1000 grid
            notes="deepstack mergers are frozen/trained together with the main merger",
            hf_examples=("Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"),
        ),
    ]
}

CLI_NAMES = {f.cli_name: f.key for f in FAMILIES.values()}


class UnknownModelType(GeoVLError, ValueError):
    pass


def get_family(config_or_type: Any) -> Family:
    """Family for a transformers config, a model, a ``model_type`` string or a CLI name."""
    if isinstance(config_or_type, str):
        mt = config_or_type
    else:
        cfg = getattr(config_or_type, "config", config_or_type)
        mt = getattr(cfg, "model_type", None)
        if mt is None and isinstance(cfg, dict):
            mt = cfg.get("model_type")
    key = CLI_NAMES.get(mt, mt)
    if key not in FAMILIES:
        supported = ", ".join(f"{f.cli_name} (model_type {f.model_type})" for f in FAMILIES.values())
        raise UnknownModelType(f"unsupported model family / model_type {mt!r}; geovl supports: {supported}")
    return FAMILIES[key]


def video_tokens(
    family: "Family | str",
    n_frames: int,
    height: int,
    width: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    **bounds,
) -> int:
    """Visual tokens of one video of ``n_frames`` frames of height×width for ``family`` (a :class:`Family`,
    model_type or CLI name) — the number of ``<|video_pad|>`` tokens its processor inserts; see
    :meth:`Family.video_grid_thw` for what the bounds mean (``**bounds``: ``cap_pixels_per_frame``,
    ``max_video_tokens``)."""
    fam = family if isinstance(family, Family) else get_family(family)
    return fam.video_tokens(n_frames, height, width, min_pixels, max_pixels, **bounds)


def video_bounds_of(processor) -> dict:
    """The video bounds a Qwen-VL processor (or its ``video_processor``) applies, as keyword arguments of
    :func:`video_tokens`: ``min_pixels``, ``max_pixels``, ``cap_pixels_per_frame``, ``max_video_tokens``."""
    vp = getattr(processor, "video_processor", processor)
    size = vp.size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return {
        "min_pixels": int(get("shortest_edge")),
        "max_pixels": int(get("longest_edge")),
        "cap_pixels_per_frame": bool(getattr(vp, "cap_pixels_per_frame", False)),
        "max_video_tokens": int(getattr(vp, "max_video_tokens", 0) or 0) or None,
    }
