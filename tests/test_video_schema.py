"""Video samples in the schema and the dataset files: the ``{"type": "video"}`` part, the ``videos`` column
(Parquet and JSONL, files or data URIs), old files without it, validation (part count, dates), and the
video settings in the preprocessing config."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geovl.data.io import ARROW_SCHEMA, DatasetWriter, read_samples
from geovl.data.schema import SampleError, make_sample, sample_videos, validate_sample
from geovl.imagery.video import VideoSettings, encode_mp4, read_frames
from geovl.models.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_mp4([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(4)], fps=2)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_make_sample_with_a_video(mp4):
    s = make_sample("v1", "视频中出现新建筑了吗？", "是", videos=[mp4], qtype="yes_no")
    assert s["messages"][0]["content"][0] == {"type": "video"}
    assert sample_videos(s) == [mp4]
    img = make_sample("i1", "q", "a", images=[_png()])
    assert "videos" not in img and sample_videos(img) == []


def test_validation_of_video_parts(mp4):
    s = make_sample("v1", "q", "a", videos=[mp4])
    bad = dict(s, videos=[])
    with pytest.raises(SampleError) as e:
        validate_sample(bad)
    assert e.value.reason == "video_count_mismatch"
    with pytest.raises(SampleError) as e:
        validate_sample(dict(s, videos=[mp4, mp4]))
    assert e.value.reason == "video_count_mismatch"
    with pytest.raises(SampleError) as e:
        validate_sample(dict(s, videos=["not bytes"]))
    assert e.value.reason == "bad_schema"
    no_col = {k: v for k, v in s.items() if k != "videos"}  # a video part but no videos at all
    with pytest.raises(SampleError, match="1 video parts but 0 videos"):
        validate_sample(no_col)
    in_answer = json.loads(json.dumps({k: v for k, v in s.items() if k != "videos"}))
    in_answer["videos"] = [mp4]
    in_answer["messages"][1]["content"].append({"type": "video"})
    with pytest.raises(SampleError, match="only allowed in user turns"):
        validate_sample(in_answer)
    with pytest.raises(SampleError) as e:
        validate_sample(dict(s, messages=[{"role": "user", "content": [{"type": "audio"}]}]))
    assert e.value.reason == "bad_schema"


def test_dates_validated_one_per_image():
    png = _png()
    ok = make_sample(
        "t", "影像1（2019-06-01）…", "2021", images=[png, png], meta={"dates": ["2019-06-01", "2021-06-01"]}
    )
    assert ok["meta"]["dates"] == ["2019-06-01", "2021-06-01"]
    make_sample("legacy", "q", "a", images=[png, png], meta={"dates": ["before", "after"]})  # data synth's labels
    for dates, why in (
        (["2019-06-01"], "1 dates for 2 images"),
        (["2019-06-01", "2021-02-30"], "not an ISO date"),
        (["2019-06-01", "2021/06/01"], "not an ISO date"),
        (["2019-06-01", 2021], "list of 'YYYY-MM-DD'"),
        ("2019-06-01,2021-06-01", "list of 'YYYY-MM-DD'"),
    ):
        with pytest.raises(SampleError, match=why) as e:
            make_sample("t", "q", "a", images=[png, png], meta={"dates": dates})
        assert e.value.reason == "bad_dates"


@pytest.mark.parametrize("ext,mode", [("parquet", "files"), ("jsonl", "files"), ("jsonl", "base64")])
def test_round_trip_mixed_image_and_video(tmp_path, mp4, ext, mode):
    png = _png()
    samples = [
        make_sample("img", "q", "a", images=[png]),
        make_sample("vid", "Does a new building appear in the video?", "yes", videos=[mp4], qtype="yes_no"),
        make_sample("both", "q", "a", images=[png], videos=[mp4, mp4]),
    ]
    out = tmp_path / f"d.{ext}"
    with DatasetWriter(out, images=mode) as w:
        for s in samples:
            w.read_one()
            assert w.write(s)
    back = list(read_samples(out))
    assert back == samples
    assert len(read_frames(back[1]["videos"][0]).frames) == 4
    if ext == "jsonl":
        line = json.loads(out.read_text().splitlines()[1])
        if mode == "files":
            assert line["videos"][0].startswith("d_images/") and line["videos"][0].endswith(".mp4")
            assert len(list((tmp_path / "d_images").glob("*.mp4"))) == 1  # the same bytes are one file
        else:
            assert line["videos"][0].startswith("data:video/mp4;base64,")
        assert "videos" not in json.loads(out.read_text().splitlines()[0])
    else:
        assert pq.ParquetFile(out).schema_arrow.field("videos").type == pa.list_(pa.binary())


def test_old_parquet_without_the_videos_column_still_reads(tmp_path):
    png = _png()
    s = make_sample("old", "q", "a", images=[png])
    old_schema = pa.schema([f for f in ARROW_SCHEMA if f.name != "videos"])
    row = {
        "id": s["id"],
        "messages": s["messages"],
        "images": [png],
        "qtype": s["qtype"],
        "answer": s["answer"],
        "source": s["source"],
        "meta": "{}",
    }
    row["messages"] = [
        {"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
        for m in s["messages"]
    ]
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), path)
    back = list(read_samples(path))
    assert back == [s] and sample_videos(back[0]) == []
    assert list(read_samples(path, columns=["id", "videos"])) == [{"id": "old"}]


def test_preprocess_config_records_video_settings(tmp_path):
    vs = VideoSettings(fps=1.0, max_frames=8, max_pixels=224 * 224)
    PreprocessConfig(max_pixels=448 * 448, video=vs.to_dict()).save(tmp_path)
    cfg = PreprocessConfig.load(tmp_path)
    assert cfg.video == vs.to_dict() and cfg.video_settings() == vs
    assert json.loads((tmp_path / "geovl_preprocess.json").read_text())["video"]["fps"] == 1.0
    # max_pixels None: frames are bounded by the config's image max_pixels
    PreprocessConfig(max_pixels=448 * 448, video=VideoSettings(fps=1.0).to_dict()).save(tmp_path)
    assert PreprocessConfig.load(tmp_path).video_settings() == VideoSettings(fps=1.0, max_pixels=448 * 448)
    # a folder written before videos existed: defaults
    (tmp_path / "geovl_preprocess.json").write_text(json.dumps({"max_pixels": 100_000}))
    assert PreprocessConfig.load(tmp_path).video_settings() == VideoSettings(max_pixels=100_000)
    (tmp_path / "geovl_preprocess.json").write_text(json.dumps({}))
    assert PreprocessConfig.load(tmp_path).video_settings() == VideoSettings()
    (tmp_path / "geovl_preprocess.json").write_text(json.dumps({"video": {"fps": -1}}))
    with pytest.raises(ValueError, match="bad video settings"):
        PreprocessConfig.load(tmp_path)
