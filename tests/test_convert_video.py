"""`geovl data convert --from llava` with LLaVA/ShareGPT ``video`` fields: <video> tags (and LLaVA-Video's
<image>-for-video convention) become ``{"type": "video"}`` parts, the bytes land in ``videos``; every bad
video rejects its record with the reason; counts conserve."""

from __future__ import annotations

import io
import json

import av
import numpy as np
from PIL import Image

from geovl.cli import main
from geovl.data.io import read_samples
from geovl.data.schema import sample_videos
from geovl.imagery.video import encode_mp4, read_frames


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for _ in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_llava_video_records(tmp_path):
    good = encode_mp4([np.full((32, 48, 3), 30 * i, np.uint8) for i in range(6)], fps=2)
    other = encode_mp4([np.full((32, 48, 3), 200, np.uint8)] * 2, fps=1)
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "flight.mp4").write_bytes(good)
    (tmp_path / "vids" / "site.mp4").write_bytes(other)
    (tmp_path / "vids" / "cut.mp4").write_bytes(good[: len(good) // 2])
    (tmp_path / "vids" / "sound.mp4").write_bytes(_audio_only())
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, "PNG")
    (tmp_path / "vids" / "photo.mp4").write_bytes(png.getvalue())
    (tmp_path / "a.png").write_bytes(png.getvalue())
    records = [
        {"id": "v1", "video": "vids/flight.mp4", "conversations": [H("<video>\n视频中出现新建筑了吗？"), G("是")]},
        # LLaVA-Video convention: <image> stands for the record's video
        {"id": "v2", "video": "vids/site.mp4", "conversations": [H("<image>\nDescribe the site."), G("A field.")]},
        {
            "id": "v3",
            "video": ["vids/flight.mp4", "vids/site.mp4"],
            "image": "a.png",
            "conversations": [H("<image> map, <video> first, <video> second: same place?"), G("yes")],
        },
        {"id": "b1", "video": "vids/cut.mp4", "conversations": [H("<video> q"), G("a")]},
        {"id": "b2", "video": "vids/sound.mp4", "conversations": [H("<video> q"), G("a")]},
        {"id": "b3", "video": "vids/photo.mp4", "conversations": [H("<video> q"), G("a")]},
        {"id": "b4", "video": "vids/none.mp4", "conversations": [H("<video> q"), G("a")]},
        {"id": "b5", "video": "../outside.mp4", "conversations": [H("<video> q"), G("a")]},
        {"id": "b6", "video": ["vids/flight.mp4"], "conversations": [H("<video><video> q"), G("a")]},
        {"id": "b7", "video": "vids/flight.mp4", "conversations": [H("<video> q"), G("see <video>")]},
        {"id": "b8", "video": 7, "conversations": [H("<video> q"), G("a")]},
    ]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out.parquet"
    rc = main(["data", "convert", "--from", "llava", "--input", str(src), "--output", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["read"] == 11 and summary["written"] == 3 and summary["conserved"]
    assert summary["rejected_by_reason"] == {
        "corrupt": 1,
        "no_video_stream": 1,
        "not_a_video": 1,
        "missing_video": 1,
        "path_escape": 1,
        "tag_count_mismatch": 1,
        "image_in_assistant_turn": 1,
        "bad_record": 1,
    }
    rejects = {json.loads(x)["source"].split("#")[1]: json.loads(x) for x in (tmp_path / "out.rejects.jsonl").open()}
    assert "cut.mp4" in rejects["b1"]["detail"] and "photo.mp4" in rejects["b3"]["detail"]
    samples = {s["id"]: s for s in read_samples(out)}
    v1, v2, v3 = samples["v1"], samples["v2"], samples["v3"]
    assert v1["messages"][0]["content"] == [{"type": "video"}, {"type": "text", "text": "视频中出现新建筑了吗？"}]
    assert sample_videos(v1) == [good] and v1["images"] == []
    assert [p["type"] for p in v2["messages"][0]["content"]] == ["video", "text"] and sample_videos(v2) == [other]
    assert [p["type"] for p in v3["messages"][0]["content"]] == ["image", "text", "video", "text", "video", "text"]
    assert sample_videos(v3) == [good, other] and len(v3["images"]) == 1
    assert len(read_frames(v1["videos"][0]).frames) == 6
    assert not list(tmp_path.glob("*.partial"))


def test_split_keeps_a_video_in_one_split(tmp_path):
    clip = encode_mp4([np.full((32, 32, 3), 50, np.uint8)] * 2, fps=1)
    (tmp_path / "c.mp4").write_bytes(clip)
    records = [
        {"id": f"q{i}", "video": "c.mp4", "conversations": [H(f"<video> question {i}"), G("a")]} for i in range(12)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    out = tmp_path / "o.parquet"
    args = ["data", "convert", "--from", "llava", "--input", str(src), "--output", str(out), "--no-progress"]
    assert main(args + ["--split", "train=0.5,test=0.5"]) == 0
    sizes = sorted(sum(1 for _ in read_samples(tmp_path / f"o.{n}.parquet")) for n in ("train", "test"))
    assert sizes == [0, 12]  # all questions on one video go to one split


def test_messages_jsonl_with_videos_round_trips(tmp_path):
    """A geovl JSONL dataset with videos (files and data URIs) converts back with --from messages; the chat
    form takes inline video parts; a bad video rejects its line."""
    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample

    clip = encode_mp4([np.full((32, 32, 3), 60 * i, np.uint8) for i in range(4)], fps=2)
    samples = [
        make_sample("a", "视频里有什么？", "农田", videos=[clip]),
        make_sample("b", "q", "a", videos=[clip, clip]),
    ]
    for mode in ("files", "base64"):
        src = tmp_path / f"{mode}.jsonl"
        with DatasetWriter(src, images=mode) as w:
            for s in samples:
                w.read_one()
                w.write(s)
        out = tmp_path / f"{mode}.parquet"
        args = ["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--no-progress"]
        assert main(args) == 0
        assert list(read_samples(out)) == [
            dict(s, source=s["source"] or f"{src.name}#L{i + 1}") for i, s in enumerate(samples)
        ]
    (tmp_path / "c.mp4").write_bytes(clip)
    (tmp_path / "cut.mp4").write_bytes(clip[: len(clip) // 2])
    chat = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video", "video": "c.mp4"}, {"type": "text", "text": "Is there water?"}],
                },
                {"role": "assistant", "content": "no"},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "video_url", "video_url": {"url": "cut.mp4"}}, {"type": "text", "text": "q"}],
                },
                {"role": "assistant", "content": "a"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]},
                {"role": "assistant", "content": "a"},
            ]
        },
    ]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in chat) + "\n", encoding="utf-8")
    out = tmp_path / "chat.parquet"
    assert (
        main(["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    )
    summary = json.loads((tmp_path / "chat.summary.json").read_text())
    assert summary["written"] == 1 and summary["rejected_by_reason"] == {"corrupt": 1, "bad_schema": 1}
    (s,) = read_samples(out)
    assert s["videos"] == [clip] and s["qtype"] == "yes_no" and s["messages"][0]["content"][0] == {"type": "video"}
