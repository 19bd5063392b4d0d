"""geovl data inspect: statistics from image headers and registry token maths, exact lengths with a model."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.inspect import inspect_dataset
from geovl.data.io import DatasetWriter
from geovl.data.schema import make_sample


def _png(w: int, h: int, color=(10, 120, 200)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), color).save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "d.parquet"
    sizes = [(224, 224), (448, 224), (112, 112), (1000, 200)]
    with DatasetWriter(path) as w:
        for i, (wd, ht) in enumerate(sizes):
            w.read_one()
            w.write(make_sample(f"img{i}", "图中是否有水体？", "是", [_png(wd, ht)], "yes_no", f"a.json#{i}"))
        w.read_one()
        w.write(make_sample("txt", "How many buildings?", "3", [], "count", "b.csv#1"))
        w.read_one()
        w.write(
            make_sample(
                "two",
                "Compare the two images.",
                "The second has more water.",
                [_png(224, 224), _png(112, 224)],
                "open",
                "b.csv#2",
            )
        )
    return path, sizes


def test_counts_and_visual_tokens(dataset):
    path, sizes = dataset
    r = inspect_dataset(str(path), family="qwen2.5-vl", min_pixels=3136, max_pixels=224 * 224, progress=False)
    assert r["samples"] == 6
    assert r["by_source"] == {"a.json": 4, "b.csv": 2}
    assert r["by_qtype"] == {"count": 1, "open": 1, "yes_no": 4}
    assert r["images_per_sample"] == {"0": 1, "1": 4, "2": 1}
    # 224x224 at 28 px per token = 64; 448x224 is scaled down to the 224² budget; 112² = 16
    from geovl.models.registry import get_family

    fam = get_family("qwen2.5-vl")
    expected = sorted(fam.image_tokens(h, w, 3136, 224 * 224) for (w, h) in sizes + [(224, 224), (112, 224)])
    assert r["visual_tokens_per_image"]["p0"] == expected[0]
    assert r["visual_tokens_per_image"]["p100"] == expected[-1]
    assert expected[-1] == 64
    assert r["image_width"]["p100"] == 1000


def test_exact_lengths_match_the_processor(dataset, tiny_model_dir):
    """With --model, the reported sequence length is exactly what the processor produces."""
    from geovl.data.io import read_samples
    from geovl.models.loading import load_processor
    from geovl.models.preprocess import PreprocessConfig

    path, _ = dataset
    model = tiny_model_dir("qwen2.5-vl")
    r = inspect_dataset(str(path), model=str(model), min_pixels=3136, max_pixels=224 * 224, budget=100, progress=False)
    assert r["sequence_length_exact"] is True
    proc = load_processor(model)
    PreprocessConfig(min_pixels=3136, max_pixels=224 * 224).apply(proc)
    lengths = []
    for s in read_samples(path):
        imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in s["images"]]
        text = proc.apply_chat_template(s["messages"], tokenize=False)
        enc = proc(text=[text], images=imgs or None, return_tensors="pt")
        lengths.append(enc["input_ids"].shape[1])
    assert r["sequence_length"]["p0"] == min(lengths)
    assert r["sequence_length"]["p100"] == max(lengths)
    assert r["over_budget"] == sum(1 for n in lengths if n > 100)
    assert r["over_budget"] >= 1


def test_cli_json_preview_and_errors(dataset, capsys, tmp_path):
    path, _ = dataset
    assert main(["data", "inspect", str(path), "--family", "qwen3-vl", "--json", "--preview", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "qwen3_vl"
    assert len(out["preview"]) == 2
    assert out["preview"][0]["messages"][0]["content"].startswith("<image>")
    assert main(["data", "inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "by qtype" in text and "visual tokens/image" in text
    # bad inputs: missing file, unknown family, a folder that is not a model
    assert main(["data", "inspect", str(tmp_path / "nope.parquet")]) == 2
    assert "no such dataset file" in capsys.readouterr().err
    assert main(["data", "inspect", str(path), "--family", "llava"]) == 2
    assert "qwen2.5-vl" in capsys.readouterr().err
    assert main(["data", "inspect", str(path), "--model", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
