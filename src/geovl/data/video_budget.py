"""The per-sample token budget for videos — the one rule, used by ``geovl data inspect`` and by training.

A sample's tokens are its text and image tokens (``base``) plus, per video, what the processor turns its
one ``<|video_pad|>`` placeholder into (:func:`video_cost`). Over a budget, :func:`fit_video_budget`
**subsamples** frames — two at a time (frames go in temporal pairs), always from the video that costs the
most, never below two frames — until the sample fits; when even two frames per video do not fit (or the
sample has no video to thin), the sample is **dropped whole**. A sample is never cut inside its tokens.
:func:`subsample_clip` applies the decision to decoded frames (uniformly over the clip, times kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

MIN_FRAMES = 2  # one temporal pair: the fewest frames a video keeps


@dataclass(frozen=True)
class VideoShape:
    """A video as the processor receives it: ``frames`` sampled frames of ``height``×``width`` pixels
    (after :class:`~geovl.imagery.video.VideoSettings` ``max_pixels``), sampled at ``fps``."""

    frames: int
    height: int
    width: int
    fps: float = 2.0


@dataclass
class BudgetFit:
    """What :func:`fit_video_budget` decided. ``action``: ``fits`` (as is), ``subsampled`` (``frames`` per
    video were lowered to fit) or ``dropped`` (over budget even at two frames per video, or no video to
    thin). ``tokens``: the sample's tokens with ``frames`` (for ``dropped``: with every frame)."""

    action: str
    frames: list[int] = field(default_factory=list)
    video_tokens: list[int] = field(default_factory=list)
    tokens: int = 0

    @property
    def kept(self) -> bool:
        return self.action != "dropped"


def video_cost(
    family,
    shape: VideoShape,
    n_frames: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    count_text: Callable[[str], int] | None = None,
    **bounds,
) -> int:
    """Tokens one video adds in place of its placeholder: the visual tokens (:func:`geovl.models.registry.video_tokens`)
    and, for Qwen3-VL, a ``<t seconds>`` timestamp and a vision start/end pair per temporal pair of frames
    (counted with ``count_text`` — a tokenizer's length — else estimated at 3 bytes per token), less the
    template's one placeholder token."""
    from ..models.registry import get_family, video_tokens

    fam = family if hasattr(family, "video_tokens") else get_family(family)
    n = shape.frames if n_frames is None else n_frames
    tokens = video_tokens(fam, n, shape.height, shape.width, min_pixels, max_pixels, **bounds)
    if fam.key == "qwen3_vl":  # Qwen3VLProcessor.replace_video_token: "<t seconds><|vision_start|>…<|vision_end|>"
        tp = fam.temporal_patch_size
        times = [i / shape.fps for i in range(n)] + [(n - 1) / shape.fps] * (-n % tp)
        for g in range(0, len(times), tp):
            stamp = f"<{(times[g] + times[g + tp - 1]) / 2:.1f} seconds>"
            tokens += (count_text(stamp) if count_text else max(1, len(stamp) // 3)) + 2
    return tokens - 1


def fit_video_budget(
    base_tokens: int, videos: Sequence[VideoShape], budget: int | None, cost: Callable[[VideoShape, int], int]
) -> BudgetFit:
    """Fit one sample into ``budget`` tokens (see the module docstring). ``base_tokens``: everything but the
    videos; ``cost(shape, n_frames)``: the tokens a video adds with ``n_frames`` frames (:func:`video_cost`)."""
    frames = [int(v.frames) for v in videos]
    costs = [cost(v, n) for v, n in zip(videos, frames)]
    total = base_tokens + sum(costs)
    if budget is None or total <= budget:
        return BudgetFit("fits", frames, costs, total)
    full = total
    while total > budget:
        thinnable = [i for i, n in enumerate(frames) if n > MIN_FRAMES]
        if not thinnable:
            return BudgetFit("dropped", [int(v.frames) for v in videos], [cost(v, v.frames) for v in videos], full)
        i = max(thinnable, key=lambda j: (costs[j], -j))
        frames[i] = max(MIN_FRAMES, frames[i] - 2 if frames[i] % 2 == 0 else frames[i] - 1)
        costs[i] = cost(videos[i], frames[i])
        total = base_tokens + sum(costs)
    return BudgetFit("subsampled", frames, costs, total)


def subsample_clip(clip, n_frames: int):
    """A :class:`~geovl.imagery.video.Clip` with ``n_frames`` of ``clip``'s frames, spread uniformly over it
    (first and last kept, times kept); ``n_frames`` is rounded up to even and ``clip`` returned when not
    smaller."""
    from ..imagery.video import Clip

    n = max(MIN_FRAMES, n_frames + n_frames % 2)
    if n >= len(clip.frames):
        return clip
    last = len(clip.frames) - 1
    idx = [round(i * last / (n - 1)) for i in range(n)]
    times = [clip.times_s[i] for i in idx]
    span = times[-1] - times[0]
    return Clip([clip.frames[i] for i in idx], times, (n - 1) / span if span > 0 else clip.fps)
