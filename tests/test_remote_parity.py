"""`geovl eval --api` against a running `geovl serve` gives the same predictions as `geovl eval` with the
local engine (greedy), on a small Parquet dataset with single and several images (PNG, JPEG, a
4-band GeoTIFF), multi-turn conversations with an image in an earlier turn, a system prompt and a
text-only question; concurrent API requests (micro-batched on the server) change nothing. The same
for `geovl infer --api` (streamed answer) and the web app over the API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.data.io import DatasetWriter
from geovl.data.schema import assistant_turn, make_sample, text_part, user_turn
from serve_util import Server, free_port, jpeg, png, running

FAMILY = "qwen3-vl"


def geotiff(tmp_path) -> bytes:
    from geovl.imagery.geotiff import Raster, write_raster

    arr = (np.random.default_rng(5).random((4, 48, 64)) * 4000).astype("uint16")
    p = tmp_path / "scene.tif"
    write_raster(p, Raster(arr, crs="EPSG:32650", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)))
    return p.read_bytes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    samples = [
        make_sample("en1", "Is there water in the scene?", "yes", [png(1)], qtype="yes_no", meta={"lang": "en"}),
        make_sample("zh1", "图中有没有耕地？", "有", [png(2, 168, 56)], qtype="yes_no", meta={"lang": "zh"}),
        make_sample(
            "two", "Compare the two images: what changed?", "a new road", [png(3), jpeg(4)], meta={"lang": "en"}
        ),
        make_sample("tif", "What land cover dominates?", "forest", [geotiff(root)], meta={"lang": "en"}),
        make_sample("txt", "What is remote sensing?", "observing the Earth from afar", [], meta={"lang": "en"}),
        make_sample(
            "sys",
            "Count the buildings.",
            "3",
            [png(6, 70, 70)],
            qtype="count",
            system="You are a remote-sensing expert.",
            meta={"lang": "en"},
        ),
    ]
    multi = make_sample("multi", "x", "y", [png(7)], meta={"lang": "zh"})
    multi["messages"] = [
        {"role": "system", "content": [text_part("你是遥感专家。")]},
        user_turn("描述这张影像。", 1),
        assistant_turn("有农田和道路。"),
        user_turn("道路是新建的吗？"),
        assistant_turn("是"),
    ]
    multi["answer"] = "是"
    samples.append(multi)
    path = root / "data.parquet"
    with DatasetWriter(path) as w:
        for s in samples:
            w.read_one()
            assert w.write(s)
    return path


def read(p):
    return [json.loads(x) for x in open(p, encoding="utf-8")]


def test_eval_and_infer_over_the_api_equal_the_local_engine(tiny_model_dir, dataset, tmp_path, capsys):
    model = str(tiny_model_dir(FAMILY))
    port = free_port()
    server = Server(
        ["serve", "--model", model, "--port", str(port), "--served-model-name", "geo-tiny", "--log-level", "warning"],
        tmp_path / "server.log",
        port,
    )
    common = ["--data", str(dataset), "--max-new-tokens", "10", "--no-progress"]
    with running(server):
        local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
        assert main(["eval", "--model", model, *common, "--out", str(local)]) == 0
        assert main(["eval", "--api", server.url + "/v1", *common, "--out", str(remote), "--batch-size", "4"]) == 0
        capsys.readouterr()
        img = tmp_path / "a.png"
        img.write_bytes(png(11))
        q = ["--image", str(img), "--question", "有没有违规建设？", "--max-new-tokens", "12"]
        assert main(["infer", "--model", model, *q]) == 0
        local_answer = capsys.readouterr().out
        assert main(["infer", "--api", server.url, "--model", "geo-tiny", *q]) == 0
        remote_answer = capsys.readouterr().out
        # the web app over the API (`geovl ui --api`): the same streamed answer
        from geovl.inference.remote import RemoteEngine
        from geovl.ui.webapp import ChatApp, Conversation

        app = ChatApp(RemoteEngine(server.url), where=server.url)
        *_, (_, history, conv, _, _) = app.respond(
            {"text": "有没有违规建设？", "files": [str(img)]}, [], Conversation(), "zh", 0.0, 12
        )
        ui_answer = history[-1]["content"]
    r_local, r_remote = read(local), read(remote)
    assert [r["id"] for r in r_local] == ["en1", "zh1", "two", "tif", "txt", "sys", "multi"]
    assert [r["id"] for r in r_remote] == [r["id"] for r in r_local]
    assert [r["prediction"] for r in r_remote] == [r["prediction"] for r in r_local]
    assert all(r["prediction"] for r in r_local)
    assert len({r["prediction"] for r in r_local}) > 3, "different prompts give different answers"
    assert remote_answer == local_answer and remote_answer.strip()
    assert ui_answer == local_answer.rstrip("\n") and conv.images == [png(11)]
