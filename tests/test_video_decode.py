"""Video decoding (geovl.imagery.video): sampling, streamed decode, and every refusal — each bad file made
here with PyAV itself (audio only, zero frames, a 10-hour declared duration, a 3 KB file declaring
15000×15000 pixels, an unknown codec tag, truncated data, an image renamed .mp4)."""

from __future__ import annotations

import io
import os
import resource

import av
import numpy as np
import pytest
from PIL import Image

from geovl.errors import GeoVLError
from geovl.imagery.video import Clip, VideoError, VideoInfo, VideoSettings, encode_mp4, probe, read_frames
from video_util import audio_only_mp4, mp4_declaring, ten_hour_mp4, zero_frame_avi


def _ramp(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frame i is flat grey 10·i: its value identifies it after lossy coding."""
    return [np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)]


def _frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 10))


@pytest.fixture(scope="module")
def clip5s() -> bytes:
    return encode_mp4(_ramp(25), fps=5)  # 5 s at 5 fps


def _refused(data, reason: str, settings: VideoSettings | None = None, name: str | None = None):
    settings = settings or VideoSettings()
    for fn in (probe, read_frames):
        with pytest.raises(VideoError) as e:
            fn(data, settings)
        assert e.value.reason == reason, (fn.__name__, str(e.value))
        assert isinstance(e.value, GeoVLError) and isinstance(e.value, ValueError)
        if name:
            assert name in str(e.value)
    return e.value


# ------------------------------------------------------------------------------------------ good videos


def test_probe_reads_the_headers(clip5s):
    info = probe(clip5s)
    assert info == VideoInfo(width=64, height=48, frames=25, duration_s=5.0, fps=5.0, codec="h264")


def test_sampling_by_fps_even_and_in_order(clip5s):
    clip = read_frames(clip5s, VideoSettings(fps=2.0, max_frames=16))
    assert isinstance(clip, Clip)
    assert len(clip.frames) == 10 and len(clip.times_s) == 10
    assert all(f.dtype == np.uint8 and f.shape == (48, 64, 3) for f in clip.frames)
    # one frame every 0.5 s (the nearest of the 5 fps frames), each decoded frame is the one at its time
    assert [_frame_index(f) for f in clip.frames] == [round(t * 5) for t in clip.times_s]
    assert clip.times_s == pytest.approx([0.0, 0.4, 1.0, 1.4, 2.0, 2.4, 3.0, 3.4, 4.0, 4.4])
    assert clip.fps == pytest.approx(2.0, rel=0.1)


def test_max_frames_spreads_over_the_whole_video(clip5s):
    clip = read_frames(clip5s, VideoSettings(fps=2.0, max_frames=4))
    assert len(clip.frames) == 4
    idx = [_frame_index(f) for f in clip.frames]
    assert idx == sorted(idx) and idx[0] == 0 and idx[-1] >= 18  # spans the clip, not its first 2 s


def test_odd_count_repeats_the_last_frame():
    data = encode_mp4(_ramp(3), fps=2)  # 1.5 s at 2 fps → 3 frames sampled
    clip = read_frames(data, VideoSettings(fps=2.0, max_frames=16))
    assert len(clip.frames) == 4
    assert [_frame_index(f) for f in clip.frames] == [0, 1, 2, 2]
    assert clip.times_s[-1] == clip.times_s[-2]


def test_one_frame_video_gives_a_pair():
    clip = read_frames(encode_mp4(_ramp(1), fps=1), VideoSettings())
    assert len(clip.frames) == 2 and np.array_equal(clip.frames[0], clip.frames[1])


def test_slow_video_gives_each_frame_once():
    data = encode_mp4(_ramp(4), fps=1)  # 4 s at 1 fps sampled at 4 fps: 4 distinct frames, not 16
    clip = read_frames(data, VideoSettings(fps=4.0, max_frames=16))
    assert [_frame_index(f) for f in clip.frames] == [0, 1, 2, 3]


def test_long_video_seeks_and_keeps_only_sampled_frames():
    # 60 s at 5 fps (300 frames): 6 frames spread over it; frame i has value 3·i mod 256
    frames = (np.full((48, 64, 3), (3 * i) % 256, np.uint8) for i in range(300))
    data = encode_mp4(frames, fps=5)
    clip = read_frames(data, VideoSettings(fps=2.0, max_frames=6))
    assert clip.times_s == pytest.approx([0, 10, 20, 30, 40, 50])
    got = [float(f.mean()) for f in clip.frames]
    assert got == pytest.approx([(3 * round(t * 5)) % 256 for t in clip.times_s], abs=1.2)  # neighbours differ by 3


def test_sparse_sampling_seeks_instead_of_decoding_everything():
    # 100 s at 5 fps with a keyframe every 2 s: 16 frames spread over it need a few frames each, not 500
    frames = (np.full((32, 32, 3), (5 * i) % 256, np.uint8) for i in range(500))
    data = encode_mp4(frames, fps=5, keyint=10)
    clip = read_frames(data, VideoSettings(fps=2.0, max_frames=16))
    assert len(clip.frames) == 16 and clip.times_s[-1] == pytest.approx(93.75, abs=0.2)
    got = [float(f.mean()) for f in clip.frames]
    assert got == pytest.approx([(5 * round(t * 5)) % 256 for t in clip.times_s], abs=1.5)
    assert clip.decoded < 500 / 3


def test_max_pixels_resizes_inside_the_decoder():
    data = encode_mp4(_ramp(4, h=240, w=320), fps=2)
    clip = read_frames(data, VideoSettings(max_pixels=160 * 120))
    assert clip.frames[0].shape[0] * clip.frames[0].shape[1] <= 160 * 120
    assert clip.frames[0].shape[:2] == (120, 160)


def test_display_rotation_is_applied():
    buf = io.BytesIO()  # a phone-style clip: coded 64×32 with a 90° display rotation
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=2)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        a = np.zeros((32, 64, 3), np.uint8)
        a[:, :8] = 255  # a white stripe on the left edge
        for _ in range(2):
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    frame = read_frames(buf.getvalue()).frames[0]
    assert frame.shape == (64, 32, 3)  # upright: turned 90° counter-clockwise
    assert frame[-8:].mean() > 200 and frame[:-12].mean() < 30  # the left stripe is now at the bottom


@pytest.mark.parametrize(
    "fmt,codec,name",
    [
        ("webm", "libvpx-vp9", "vp9"),
        ("avi", "mpeg4", "mpeg4"),
        ("matroska", "libx264", "h264"),
        ("mpegts", "mpeg2video", "mpeg2video"),
    ],
)
def test_other_containers_and_codecs(fmt, codec, name):
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=4)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(8):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe(buf.getvalue())
    assert (info.codec, info.width, info.height, info.frames) == (name, 64, 48, 8)
    clip = read_frames(buf.getvalue())  # 2 s at 2 fps
    assert [round(float(f.mean()) / 30) for f in clip.frames] == [0, 2, 4, 6]


def test_path_and_bytes_agree(tmp_path, clip5s):
    p = tmp_path / "clip.mp4"
    p.write_bytes(clip5s)
    a, b = read_frames(p), read_frames(clip5s)
    assert probe(str(p)) == probe(clip5s)
    assert [f.tobytes() for f in a.frames] == [f.tobytes() for f in b.frames]


def test_settings_round_trip_and_checks():
    s = VideoSettings(fps=1.0, max_frames=8, max_pixels=256 * 256)
    assert VideoSettings.from_dict(s.to_dict()) == s
    assert VideoSettings.from_dict(None) == VideoSettings()
    with pytest.raises(ValueError, match="unknown video settings"):
        VideoSettings.from_dict({"fps": 1, "frames": 3})
    for bad in ({"fps": 0}, {"max_frames": 1}, {"max_bytes": -1}, {"max_pixels": 10}, {"fps": float("nan")}):
        with pytest.raises(ValueError):
            VideoSettings(**bad)


def test_encode_mp4_checks_its_input():
    with pytest.raises(ValueError, match="even"):
        encode_mp4(_ramp(2, h=47), fps=2)
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4([], fps=2)
    with pytest.raises(ValueError, match="first was"):
        encode_mp4([np.zeros((48, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)], fps=2)


# ------------------------------------------------------------------------------------------ bad videos


def test_image_renamed_mp4_is_not_a_video(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "PNG")
    p = tmp_path / "photo.mp4"
    p.write_bytes(buf.getvalue())
    err = _refused(p, "not_a_video", name="photo.mp4")
    assert "PNG" in str(err)


def test_text_file_is_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("hello " * 50)
    _refused(p, "not_a_video", name="notes.mp4")


def test_playlist_is_never_followed():
    # an HLS playlist would make FFmpeg open other files; the demuxer whitelist never probes it
    m3u = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n"
    _refused(m3u, "not_a_video")


def test_audio_only():
    err = _refused(audio_only_mp4(), "no_video_stream")
    assert "audio" in str(err)


def test_zero_frames():
    _refused(zero_frame_avi(), "zero_frames")


def test_ten_hour_declared_duration_refused_before_decoding():
    data = ten_hour_mp4()  # two frames, 10 hours apart: a 2 KB file declaring 36001 s
    assert len(data) < 10_000
    err = _refused(data, "too_long")
    assert "36001 s" in str(err)
    assert probe(data, VideoSettings(max_duration_s=40000)).duration_s == pytest.approx(36001)


def test_decompression_bomb_refused_from_the_header():
    data = mp4_declaring(15000)  # 3 KB declaring 15000×15000 (675 MB of RGB per frame)
    assert len(data) < 10_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _refused(data, "too_large")
    assert "15000×15000" in str(err)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200  # nothing near one decoded frame was allocated


def test_frame_size_limit_is_a_setting(clip5s):
    _refused(clip5s, "too_large", VideoSettings(max_frame_pixels=64 * 47))
    assert probe(clip5s, VideoSettings(max_frame_pixels=64 * 48)).width == 64


def test_byte_limit_checked_first(clip5s, tmp_path):
    _refused(clip5s, "too_many_bytes", VideoSettings(max_bytes=len(clip5s) - 1))
    p = tmp_path / "v.mp4"
    p.write_bytes(clip5s)
    _refused(p, "too_many_bytes", VideoSettings(max_bytes=100), name="v.mp4")


def test_unsupported_codec(clip5s):
    d = bytearray(clip5s)
    entry = d.find(b"avc1", d.find(b"stsd"))
    d[entry : entry + 4] = b"zzzz"  # a sample-entry fourcc no decoder knows
    _refused(bytes(d), "unsupported_codec")


def test_truncated_and_corrupt(clip5s, tmp_path):
    p = tmp_path / "cut.mp4"
    p.write_bytes(clip5s[: len(clip5s) // 2])  # the moov box (at the end) is gone
    _refused(p, "corrupt", name="cut.mp4")
    _refused(b"", "corrupt")
    # the headers survive but the frame data is garbage: decoding fails or yields nothing
    d = bytearray(clip5s)
    mdat = d.find(b"mdat")
    d[mdat + 4 : mdat + 4 + 1200] = bytes(1200)
    with pytest.raises(VideoError) as e:
        read_frames(bytes(d))
    assert e.value.reason == "corrupt"


def test_no_temp_files_left(tmp_path, clip5s, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    tempfile.tempdir = None
    try:
        read_frames(clip5s)
        with pytest.raises(VideoError):
            read_frames(clip5s[:300])
        encode_mp4(_ramp(2), fps=1)
    finally:
        tempfile.tempdir = None
    assert os.listdir(tmp_path) == []
