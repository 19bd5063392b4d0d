"""Video: the one place that decides whether video bytes or a video file may be read, and reads them.

Decoding uses PyAV (``av``, FFmpeg bundled in the wheel; no system install). Everything a file
declares is checked **before** any frame is decoded, from the container and stream headers:

- byte size (:attr:`VideoSettings.max_bytes`, from ``len(bytes)`` or ``os.stat``) → ``too_many_bytes``;
- a known container (:data:`CONTAINERS`, enforced by FFmpeg's ``format_whitelist``: image "pipes",
  playlists (HLS/concat, which would open other files or URLs) and exotic demuxers are never probed)
  → ``not_a_video`` (an image renamed ``.mp4`` is named as such) or ``corrupt`` (a known container
  FFmpeg cannot open, e.g. a truncated MP4 without its ``moov`` box);
- a video stream → ``no_video_stream`` (audio only); a decoder in :data:`CODECS` → ``unsupported_codec``;
- declared duration (:attr:`VideoSettings.max_duration_s`) → ``too_long``; declared frame size
  (:attr:`VideoSettings.max_frame_pixels`, a tiny file declaring a huge resolution is a decompression
  bomb) → ``too_large``.

:func:`read_frames` then decodes **streamed**: packets are demuxed one by one, every decoded frame that
is not a sampling point is dropped at once, and between sampling points packets are only demuxed —
decoding restarts at the last keyframe before the next sampling point — so memory holds the kept frames
(and at most 64 MiB of compressed packets) (resized to
:attr:`VideoSettings.max_pixels` inside the decoder when set, and turned upright when the stream
carries a display rotation, as phone videos do). Frames are sampled uniformly at
:attr:`VideoSettings.fps`, at most :attr:`VideoSettings.max_frames`; the count is made **even** by
repeating the last frame, because the Qwen-VL video processors merge frames in time pairs
(``temporal_patch_size`` 2). Decoding errors, a stream that yields no frame, or frames larger than
declared raise :class:`VideoError` too.

:func:`encode_mp4` writes H.264 MP4 with the same library (synthetic clips, tests).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import GeoVLError

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_FRAME_PIXELS = 4096 * 4096

# FFmpeg demuxers geovl lets probe a file (format_whitelist). Names as FFmpeg spells them.
CONTAINERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts", "flv", "mpeg", "ogg")
CONTAINER_NAMES = "MP4/MOV, MKV/WebM, AVI, MPEG-TS, FLV, MPEG-PS, Ogg"
# Video decoders geovl runs (FFmpeg decoder names). Raw/uncompressed and rarely used codecs are refused:
# they add attack surface and (rawvideo) make a tiny header a memory bomb.
CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4", "mpeg1video", "mpeg2video", "mjpeg", "theora"}
)
# First bytes of the containers above (to tell a damaged video from something that is not one).
_CONTAINER_MAGICS = (b"\x1a\x45\xdf\xa3", b"FLV", b"\x00\x00\x01\xba", b"OggS")
# Frames decoded (kept or not) per second of declared duration before a stream counts as runaway
# (broken timestamps): bounds the work of one decode.
_MAX_DECODE_FPS = 240.0
_SKIP_GAP_S = 1.0  # stop decoding when the next sampling point is further away than this
_LOOKAHEAD_S = 0.25  # start decoding this much before a sampling point (B-frames come out late)
_MAX_PENDING_BYTES = 64 * 1024 * 1024  # compressed packets held back while skipping


class VideoError(GeoVLError, ValueError):
    """A video geovl refuses or cannot read. ``reason`` is a stable slug (a rejects-file reason of
    ``data convert``, an API error code): ``corrupt``, ``not_a_video``, ``no_video_stream``,
    ``zero_frames``, ``too_long``, ``too_large``, ``too_many_bytes``, ``unsupported_codec``;
    ``detail`` says what is wrong, naming the file."""

    REASONS = (
        "corrupt",
        "not_a_video",
        "no_video_stream",
        "zero_frames",
        "too_long",
        "too_large",
        "too_many_bytes",
        "unsupported_codec",
    )

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoSettings:
    """How videos are sampled for the model and the limits a video must pass before decoding.

    ``fps``: sampling rate (frames kept per second of video); ``max_frames``: at most this many frames
    (sampling spreads them uniformly over the whole video when ``duration × fps`` exceeds it);
    ``max_duration_s`` / ``max_bytes`` / ``max_frame_pixels``: refusal limits (declared duration, file
    size, pixels of one decoded frame); ``max_pixels``: frames larger than this are resized (aspect
    kept) while decoding; ``None`` leaves the size to the model's preprocessing (its ``max_pixels``)."""

    fps: float = 2.0
    max_frames: int = 16
    max_duration_s: float = 3600.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_pixels: int | None = None

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"video fps must be a positive number, got {self.fps!r}")
        if not isinstance(self.max_frames, int) or isinstance(self.max_frames, bool) or self.max_frames < 2:
            raise ValueError(f"video max_frames must be an integer ≥ 2 (frames go in pairs), got {self.max_frames!r}")
        if not (isinstance(self.max_duration_s, (int, float)) and self.max_duration_s > 0):
            raise ValueError(f"video max_duration_s must be positive, got {self.max_duration_s!r}")
        for name in ("max_bytes", "max_frame_pixels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"video {name} must be a positive integer, got {v!r}")
        if self.max_pixels is not None and (
            not isinstance(self.max_pixels, int) or isinstance(self.max_pixels, bool) or self.max_pixels < 28 * 28
        ):
            raise ValueError(f"video max_pixels must be None or an integer ≥ 784, got {self.max_pixels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "VideoSettings":
        """Settings from :meth:`to_dict` output (unknown keys refused, missing keys default)."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"video settings must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown video settings {unknown} (known: {sorted(known)})")
        return cls(**d)


@dataclass(frozen=True)
class VideoInfo:
    """What a video declares (read from headers, nothing decoded). ``width``/``height``: the coded frame
    size (a display rotation of ±90° swaps them in the frames :func:`read_frames` returns); ``frames`` is
    the stream's frame count, estimated from duration × rate when the container does not store it."""

    width: int
    height: int
    frames: int
    duration_s: float
    fps: float
    codec: str


@dataclass
class Clip:
    """Sampled frames (RGB uint8 H×W×3, an even count) and their times in seconds from the start;
    ``fps`` is the effective sampling rate (frames per second of video); ``decoded``: how many frames the
    decoder produced to get them (packets between sampling points are skipped undecoded)."""

    frames: list[np.ndarray] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    fps: float = 0.0
    decoded: int = 0

    def processor_metadata(self) -> dict:
        """``video_metadata`` for a Qwen-VL processor given these (already sampled) frames — call it with
        ``do_sample_frames=False``; Qwen3-VL writes its ``<t seconds>`` timestamps from ``fps`` and the
        frame indices."""
        n = len(self.frames)
        fps = self.fps if self.fps > 0 else 1.0
        return {"fps": fps, "total_num_frames": n, "frames_indices": list(range(n)), "duration": n / fps}


def _name(src) -> str:
    return "<video bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)


def _head(src, n: int = 256) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[:n])
    with open(src, "rb") as f:
        return f.read(n)


def _looks_like_container(head: bytes) -> bool:
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[:1] == b"\x47" and head[188:189] == b"\x47":  # MPEG-TS: a sync byte every 188 bytes
        return True
    return any(head.startswith(m) for m in _CONTAINER_MAGICS)


def _open(src, settings: VideoSettings):
    """Check the byte size and open the container with the demuxer whitelist; return (container, name)."""
    import av

    name = _name(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        size = len(src)
    else:
        try:
            size = os.stat(src).st_size
        except OSError as e:
            raise VideoError("corrupt", f"{name}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise VideoError("corrupt", f"{name}: empty file")
    if size > settings.max_bytes:
        raise VideoError("too_many_bytes", f"{name}: {size} bytes (at most {settings.max_bytes})")
    head = _head(src)
    from .safety import image_format

    fmt = image_format(head)
    if fmt is not None:
        raise VideoError("not_a_video", f"{name}: a {fmt} image, not a video")
    source = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else os.fspath(src)
    try:
        container = av.open(source, mode="r", options={"format_whitelist": ",".join(CONTAINERS)})
    except av.error.FFmpegError as e:
        if _looks_like_container(head) and not isinstance(e, av.error.ArgumentError):
            raise VideoError("corrupt", f"{name}: damaged or truncated video ({e.strerror or e})") from None
        raise VideoError("not_a_video", f"{name}: not a video container geovl reads ({CONTAINER_NAMES})") from None
    except (OSError, ValueError) as e:
        raise VideoError("corrupt", f"{name}: cannot open ({e})") from None
    return container, name


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        d = float(stream.duration * stream.time_base)
        if d > 0:
            return d
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _rate(stream) -> float | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and r > 0:
            return float(r)
    return None


def _check_stream(container, name: str, settings: VideoSettings):
    """The first video stream after the header checks; returns (stream, VideoInfo)."""
    if not len(container.streams):
        raise VideoError("corrupt", f"{name}: no streams found (damaged or truncated container)")
    streams = [s for s in container.streams if s.type == "video"]
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        raise VideoError("no_video_stream", f"{name}: no video stream (has {', '.join(kinds)})")
    stream = streams[0]
    ctx = stream.codec_context
    codec = ctx.name if ctx is not None else None
    if not codec or codec not in CODECS:
        raise VideoError(
            "unsupported_codec",
            f"{name}: video codec {codec or 'unknown'!r} is not supported (supported: {', '.join(sorted(CODECS))})",
        )
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise VideoError("corrupt", f"{name}: the video stream declares no frame size")
    if width * height > settings.max_frame_pixels:
        raise VideoError(
            "too_large",
            f"{name}: frames of {width}×{height} = {width * height} pixels (at most {settings.max_frame_pixels})",
        )
    duration = _duration(container, stream)
    if duration is not None and duration > settings.max_duration_s:
        raise VideoError("too_long", f"{name}: {duration:.0f} s long (at most {settings.max_duration_s:g} s)")
    rate = _rate(stream)
    frames = int(stream.frames or 0)
    if frames == 0 and duration and rate:
        frames = int(round(duration * rate))
    if frames == 0 and stream.duration == 0:
        raise VideoError("zero_frames", f"{name}: the video stream has no frames")
    info = VideoInfo(width, height, frames, float(duration or 0.0), float(rate or 0.0), codec)
    return stream, info


def probe(src: bytes | str | os.PathLike, settings: VideoSettings = VideoSettings()) -> VideoInfo:
    """What ``src`` declares (size, frames, duration, rate, codec), after every header check; nothing
    is decoded. Raises :class:`VideoError`."""
    container, name = _open(src, settings)
    try:
        return _check_stream(container, name, settings)[1]
    finally:
        container.close()


def sample_times(duration_s: float, settings: VideoSettings) -> list[float]:
    """Sampling times (seconds from the start): every ``1/fps`` s, or ``max_frames`` spread uniformly
    over the video when there would be more; at least one."""
    n_rate = max(1, int(math.floor(duration_s * settings.fps + 1e-9)))
    if n_rate <= settings.max_frames:
        return [i / settings.fps for i in range(n_rate)]
    step = duration_s / settings.max_frames
    return [i * step for i in range(settings.max_frames)]


def sampled_shape(info: VideoInfo, settings: VideoSettings = VideoSettings()) -> tuple[int, int, int]:
    """(frames, height, width) :func:`read_frames` gives for a video that declares ``info`` — from the
    headers, nothing decoded: the sampling times (each stream frame at most once), made even, and the
    frame size after ``settings.max_pixels``."""
    n = len(sample_times(info.duration_s, settings)) if info.duration_s > 0 else settings.max_frames
    if info.frames > 0:
        n = min(n, info.frames)
    n = min(settings.max_frames, n + n % 2)
    w, h = _scaled_size(info.width, info.height, settings.max_pixels)
    return n, h, w


def _scaled_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    if not max_pixels or width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * s)), max(1, int(height * s))


def read_frames(src: bytes | str | os.PathLike, settings: VideoSettings = VideoSettings()) -> Clip:
    """Sampled RGB frames of ``src`` (see :func:`sample_times`), decoded streamed; an even number of
    frames, at most ``settings.max_frames``. Raises :class:`VideoError`."""
    import av

    container, name = _open(src, settings)
    try:
        stream, info = _check_stream(container, name, settings)
        stream.thread_type = "AUTO"
        known = info.duration_s > 0
        if known:
            targets = sample_times(info.duration_s, settings)
        else:  # no declared duration: sample at the rate, up to max_frames, bounded by max_duration_s
            targets = [i / settings.fps for i in range(settings.max_frames)]
        step = (targets[1] - targets[0]) if len(targets) > 1 else 1.0 / settings.fps
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        tol = 0.5 / (info.fps or settings.fps)  # a frame within half a frame interval of a target is taken
        out_w, out_h = _scaled_size(info.width, info.height, settings.max_pixels)
        max_decoded = int(max(info.duration_s or settings.max_duration_s, 1.0) * _MAX_DECODE_FPS) + 16
        clip = Clip(fps=1.0 / step)
        state = {"k": 0, "decoded": 0}
        ctx = stream.codec_context

        def take(frames) -> bool:
            """Keep the frames that are sampling points; True once every target has a frame."""
            for frame in frames:
                state["decoded"] += 1
                if state["decoded"] > max_decoded:
                    raise VideoError("corrupt", f"{name}: more frames than its duration allows (broken timestamps)")
                if frame.width * frame.height > settings.max_frame_pixels:
                    raise VideoError(
                        "too_large",
                        f"{name}: a frame of {frame.width}×{frame.height} pixels (at most {settings.max_frame_pixels})",
                    )
                t = float(frame.time) - start if frame.time is not None else (state["decoded"] - 1) / (info.fps or 1.0)
                if t > settings.max_duration_s:
                    raise VideoError("too_long", f"{name}: longer than {settings.max_duration_s:g} s")
                k = state["k"]
                if k >= len(targets) or t < targets[k] - tol:
                    continue  # not a sampling point: dropped at once
                rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
                turns = round((frame.rotation or 0) / 90) % 4  # phones record upright via a display matrix
                if turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, turns))
                clip.frames.append(rgb)
                clip.times_s.append(round(max(t, 0.0), 6))
                while k < len(targets) and t >= targets[k] - tol:
                    k += 1  # each frame once: a video slower than the sampling rate gives fewer frames
                state["k"] = k
            return state["k"] >= len(targets)

        # Packets are demuxed one by one (compressed: cheap); they are only decoded from the last keyframe
        # before a sampling point. Between sampling points the packets since the last keyframe (or since the
        # last decoded one, when no keyframe came) wait compressed in ``pending`` — at most _MAX_PENDING_BYTES,
        # past which they are decoded and dropped — so a long gap costs demuxing, not decoding.
        pending, pending_bytes, fresh_gop, decoding, last_t = [], 0, False, False, -math.inf
        try:
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None:  # the end: drain the decoder
                    if decoding and take(packet.decode()):
                        break
                    continue
                pt = float(packet.pts * packet.time_base) - start if packet.pts is not None else last_t
                last_t = max(last_t, pt)
                if not decoding:
                    if packet.is_keyframe:
                        pending, pending_bytes, fresh_gop = [], 0, True
                    pending.append(packet)
                    pending_bytes += packet.size
                    due = pt >= targets[state["k"]] - tol - _LOOKAHEAD_S
                    if not (due or pending_bytes > _MAX_PENDING_BYTES):
                        continue
                    if fresh_gop:
                        ctx.flush_buffers()  # start clean at the keyframe
                    done = False
                    for p in pending:
                        done = take(p.decode()) or done
                    pending, pending_bytes, fresh_gop, decoding = [], 0, False, True
                    if done:
                        break
                elif take(packet.decode()):
                    break
                if decoding and known and targets[state["k"]] - pt > _SKIP_GAP_S:
                    decoding = False  # a long gap to the next sampling point: wait for a keyframe
        except av.error.FFmpegError as e:
            raise VideoError("corrupt", f"{name}: damaged video data ({e.strerror or e})") from None
        decoded = state["decoded"]
        clip.decoded = decoded
        if not clip.frames:
            if info.frames > 0:
                raise VideoError(
                    "corrupt", f"{name}: declares {info.frames} frames but none decodes (damaged or truncated)"
                )
            raise VideoError("zero_frames", f"{name}: the video stream has no frames")
        if len(clip.frames) > settings.max_frames:
            del clip.frames[settings.max_frames :], clip.times_s[settings.max_frames :]
        span = clip.times_s[-1] - clip.times_s[0]
        if len(clip.frames) > 1 and span > 0:
            clip.fps = (len(clip.frames) - 1) / span
        if len(clip.frames) % 2:
            clip.frames.append(clip.frames[-1])
            clip.times_s.append(clip.times_s[-1])
        return clip
    finally:
        container.close()


def encode_mp4(frames: Iterable[np.ndarray], fps: float, crf: int = 18, keyint: int | None = None) -> bytes:
    """H.264 MP4 (yuv420p) of RGB uint8 frames (H×W×3, all one size, even width and height) at ``fps``;
    ``keyint``: frames between keyframes (x264's default 250 when None)."""
    import av

    rate = Fraction(fps).limit_denominator(1000)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    buf = io.BytesIO()
    n = 0
    with av.open(buf, mode="w", format="mp4") as container:
        stream = None
        for arr in frames:
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"frames must be uint8 H×W×3 RGB arrays, got {arr.dtype} {arr.shape}")
            h, w = arr.shape[:2]
            if stream is None:
                if h % 2 or w % 2:
                    raise ValueError(f"H.264 (yuv420p) needs an even width and height, got {w}×{h}")
                stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "medium"})
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if keyint:
                    stream.codec_context.gop_size = int(keyint)
            elif (h, w) != (stream.height, stream.width):
                raise ValueError(f"frame {n} is {w}×{h}, the first was {stream.width}×{stream.height}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def read_video_file(path: str | os.PathLike, settings: VideoSettings = VideoSettings()) -> bytes:
    """The bytes of a video file after :func:`probe` accepted it (for datasets that embed videos)."""
    probe(path, settings)
    return Path(path).read_bytes()
