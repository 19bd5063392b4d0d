"""Video test inputs shared by the decoder, API, SFT and GRPO tests: bad files made with PyAV itself (audio only,
zero frames, a 10-hour declared duration, a header declaring a huge frame size) and a sample with video parts."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from geovl.data.schema import assistant_turn, text_part


def audio_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for _ in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def zero_frame_avi() -> bytes:
    buf = io.BytesIO()  # an AVI with a video stream header and no frame
    with av.open(buf, "w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return buf.getvalue()


def ten_hour_mp4() -> bytes:
    buf = io.BytesIO()  # two frames 10 hours apart: a 2 KB file declaring 36001 s
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1)
        for pts in (0, 36000):
            f = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            f.pts, f.time_base = pts, Fraction(1, 1)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def mp4_declaring(side: int = 15000) -> bytes:
    """A 4-frame 64×48 MJPEG MP4 whose sample entry and JPEG headers declare side×side pixels (a decompression
    bomb)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mjpeg", rate=5)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        for _ in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    d = bytearray(buf.getvalue())
    entry = d.find(b"mp4v", d.find(b"stsd"))
    assert d[entry + 28 : entry + 32] == bytes([0, 64, 0, 48])  # width, height of the visual sample entry
    d[entry + 28 : entry + 32] = side.to_bytes(2, "big") * 2
    i = 0
    while (i := d.find(b"\xff\xc0", i)) >= 0:  # each JPEG's SOF0: length, precision, height, width
        assert d[i + 5 : i + 9] == bytes([0, 48, 0, 64])
        d[i + 5 : i + 9] = side.to_bytes(2, "big") * 2
        i += 2
    return bytes(d)


def video_sample(id: str, question: str, answer: str, videos: list[bytes], images: list[bytes] = ()) -> dict:
    """A one-turn sample: its images, then its videos, then the question; the answer as the assistant turn."""
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos] + [text_part(question)]
    return {
        "id": id,
        "messages": [{"role": "user", "content": content}, assistant_turn(answer)],
        "images": list(images),
        "videos": list(videos),
        "qtype": "open",
        "answer": answer,
        "source": f"test#{id}",
        "meta": {"lang": "en"},
    }
