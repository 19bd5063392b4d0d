"""The HTTP side of video safety: reading the videos a client sends (OpenAI ``video_url`` parts of the
API, video uploads of the web app).

- **References** follow the image rules of :mod:`geovl.imagery.safety` (the same loader, ``kind="video"``):
  ``data:video/mp4;base64,...`` always; ``http(s)://`` only with ``--allow-http-images``; ``file://`` URLs
  and plain paths only inside ``--allowed-image-dir``. The byte limit is the video one.
- **Decoding** is :func:`geovl.imagery.video.read_frames` (PyAV, streamed from memory: no temporary file)
  with :func:`request_settings`: the model folder's sampling (``PreprocessConfig.video``, as training
  sampled) under the server's limits (bytes, declared duration, declared frame size, frames per video).
  Frames are resized while decoding to the settings' ``max_pixels`` (the model's, else the server's), so
  a request holds at most ``max_frames`` frames of that size however large the video.
- **Errors**: a :class:`~geovl.imagery.video.VideoError` becomes an :class:`ImageRefError` (the one error
  family of client media) with a stable ``code`` (:func:`video_code`), an HTTP status (413 for the size
  limits: bytes, frame size; 400 otherwise) and a bilingual message naming the server option that refused it.
"""

from __future__ import annotations

import dataclasses

from ..imagery.safety import ImageLimits, ImageRefError, load_reference
from ..imagery.video import Clip, VideoError, VideoSettings, read_frames

# the server's limits (geovl serve --max-video-*): only the limit fields are read, see request_settings
SERVER_VIDEO_LIMITS = VideoSettings(
    max_frames=64,  # a cap on the model's own max_frames (never raised above it)
    max_duration_s=3600.0,
    max_bytes=64 * 1024 * 1024,
    max_frame_pixels=3840 * 2160,  # declared frame size (4K UHD); larger videos are refused before decoding
    max_pixels=1280 * 720,  # frames resized to this while decoding when the model folder sets no bound
)

ZH = {
    "corrupt": "视频损坏或不完整",
    "not_a_video": "不是视频文件",
    "no_video_stream": "文件中没有视频流（仅有音频？）",
    "zero_frames": "视频没有任何帧",
    "too_long": "视频时长超过上限",
    "too_large": "视频分辨率超过上限",
    "too_many_bytes": "视频文件过大",
    "unsupported_codec": "不支持的视频编码",
}
OPTIONS = {
    "too_long": "--max-video-seconds",
    "too_large": "--max-video-frame-pixels",
    "too_many_bytes": "--max-video-bytes",
}
STATUS = {"too_large": 413, "too_many_bytes": 413}


def video_code(reason: str) -> str:
    """The API error code of a :class:`VideoError` reason: ``video_corrupt``, ``not_a_video``,
    ``no_video_stream``, ``video_zero_frames``, ``video_too_long``, ``video_too_large``,
    ``video_too_many_bytes``, ``video_unsupported_codec``."""
    return reason if "video" in reason else f"video_{reason}"


def request_settings(model: VideoSettings | None, limits: VideoSettings = SERVER_VIDEO_LIMITS) -> VideoSettings:
    """How a request's videos are decoded: the model's sampling (fps, max_frames, max_pixels) with the
    server's limits applied — the smaller of each limit, ``max_frames`` capped, ``max_pixels`` the model's
    when it sets one (as training decoded), else the server's (a memory bound)."""
    model = model or VideoSettings()
    return dataclasses.replace(
        model,
        max_frames=min(model.max_frames, limits.max_frames),
        max_duration_s=min(model.max_duration_s, limits.max_duration_s),
        max_bytes=min(model.max_bytes, limits.max_bytes),
        max_frame_pixels=min(model.max_frame_pixels, limits.max_frame_pixels),
        max_pixels=model.max_pixels if model.max_pixels is not None else limits.max_pixels,
    )


def engine_settings(engine) -> VideoSettings | None:
    """The video settings a model folder records (``engine.video``; None: the defaults)."""
    v = getattr(engine, "video", None)
    return v if isinstance(v, VideoSettings) else None


def video_ref_error(e: VideoError) -> ImageRefError:
    detail = e.detail or str(e)
    for prefix in ("<video bytes>: ",):
        detail = detail.removeprefix(prefix)
    hint = f" ({OPTIONS[e.reason]})" if e.reason in OPTIONS else ""
    return ImageRefError(
        f"{detail}{hint} / {ZH.get(e.reason, '视频无法读取')}", video_code(e.reason), STATUS.get(e.reason, 400)
    )


def decode_video(data: bytes, settings: VideoSettings) -> Clip:
    """The sampled clip of video bytes; bad video: :class:`ImageRefError` (see :func:`video_ref_error`)."""
    if not data:
        raise ImageRefError("video data is empty / 视频数据为空", "video_corrupt")
    try:
        return read_frames(data, settings)
    except VideoError as e:
        raise video_ref_error(e) from None


def fetch_video(url: str, limits: ImageLimits, settings: VideoSettings) -> tuple[bytes, Clip]:
    """(bytes, sampled clip) of a ``video_url`` reference, checked as above."""
    data = load_reference(url, limits, max_bytes=settings.max_bytes, kind="video")
    return data, decode_video(data, settings)
