"""Video and time-series samples through training and evaluation, for the three tiny families.

- the video token count the pre-pass uses (:func:`geovl.models.vision_input.video_prompt_tokens`) equals the
  processor's own; dataset lengths equal the encoded lengths; labels decoded are exactly the assistant answers;
- a mixed batch (image, video, image + video, time series, text only) runs through the model;
- a packed row holding video samples gives each sample the logits it gets alone;
- SFT a few steps on video + time-series samples writes the video settings next to the weights, and ``geovl eval``
  answers every sample of that data with the trained folder;
- the engine answers a mixed image/video batch exactly as one by one (greedy), applies the folder's video
  settings, and a bad video rejects only its sample;
- GRPO keeps video samples (their training: tests/test_grpo_video.py) next to time-series samples.
Clips are made with :func:`geovl.imagery.video.encode_mp4` (tiny frames, few of them).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample, text_part
from geovl.imagery.video import VideoError, VideoSettings, encode_mp4, read_frames
from geovl.models.registry import get_family
from geovl.train.data import IGNORE, SFTCollator, SFTDataset
from sft_util import png, run_cli, train, write_dataset
from video_util import video_sample

DATES = ["2019-06-01", "2020-06-01", "2021-06-01"]


def mp4(n: int = 6, h: int = 48, w: int = 64, seed: int = 0, fps: float = 4.0) -> bytes:
    """A clip of ``n`` frames: a bright square sliding over noise (frames differ, as in a flight)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        x = (i * 7) % max(w - 12, 1)
        f[h // 3 : h // 3 + 12, x : x + 12] = 250
        frames.append(f)
    return encode_mp4(frames, fps)


def timeseries_sample(id: str, seed: int = 0) -> dict:
    """Three dated images of one place; the dates are in meta and in the prompt (as the producer writes them)."""
    q = "".join(f"影像{i + 1}（{d}）/ Image {i + 1} ({d}) " for i, d in enumerate(DATES))
    q += "这座建筑是哪一年出现的？/ In which year did the building appear?"
    imgs = [png(56, 56, seed + i) for i in range(len(DATES))]
    return make_sample(id, q, "2021", imgs, qtype="open", source=f"test#{id}", meta={"dates": DATES, "lang": "zh"})


def samples() -> list[dict]:
    return [
        video_sample("v0", "What appears during the flight?", "A building.", [mp4(6, seed=1)]),
        make_sample("i0", "Is there water in the image?", "yes", [png(56, 84, 2)], qtype="yes_no", source="test#i0"),
        video_sample(
            "v1", "视频中有什么变化？", "出现了一栋新建筑。", [mp4(8, 64, 48, seed=3)], images=[png(84, 56, 4)]
        ),
        timeseries_sample("ts0", seed=5),
        make_sample("t0", "Name a river in Sichuan.", "The Min River.", [], source="test#t0"),
        video_sample("v2", "How many clips?", "Two.", [mp4(4, seed=6), mp4(6, 32, 32, seed=7)]),
    ]


ANSWERS = ["A building.", "yes", "出现了一栋新建筑。", "2021", "The Min River.", "Two."]


def _processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_video_token_count_is_the_processors(tiny_model_dir, family):
    from geovl.models.vision_input import video_processor_kwargs, video_prompt_tokens

    proc = _processor(tiny_model_dir(family))
    pad = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    bare = "<|vision_start|><|video_pad|><|vision_end|>"
    for n, h, w, fps in [(6, 48, 64, 4.0), (4, 64, 48, 2.0), (16, 32, 96, 8.0)]:
        clip = read_frames(mp4(n, h, w, seed=n, fps=fps), VideoSettings(fps=2.0, max_frames=8))
        assert len(clip.frames) % 2 == 0 and 2 <= len(clip.frames) <= 8
        ids = proc(text=[bare], **video_processor_kwargs([clip]), return_tensors="pt")["input_ids"][0]
        vis, n_tok = video_prompt_tokens(proc, get_family(family), clip)
        assert vis == int((ids == pad).sum()) > 0
        assert n_tok - 1 == ids.shape[0] - 3  # the one <|video_pad|> the template wrote → n_tok tokens


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lengths_labels_and_a_mixed_batch(tiny_model_dir, tmp_path, family):
    from transformers import AutoModelForImageTextToText

    folder = tiny_model_dir(family)
    proc = _processor(folder)
    data = write_dataset(tmp_path / "d.parquet", samples())
    ds = SFTDataset([data], proc, get_family(family), progress=False, video_settings=VideoSettings(max_frames=4))
    assert ds.summary()["kept"] == 6 and not ds.dropped
    feats = [ds[i] for i in range(len(ds))]
    tok = proc.tokenizer
    for f, n, answer in zip(feats, ds.lengths, ANSWERS):
        assert f["input_ids"].shape[0] == n, f["sample_id"]  # the pre-pass length is exact (video tokens too)
        lab = f["labels"]
        assert tok.decode(lab[lab != IGNORE]) == answer + "<|im_end|>", f["sample_id"]  # only the answer learns
    # video samples carry video inputs (Qwen2.5-VL: seconds per temporal patch too), none on the others
    has_video = [f["sample_id"] for f in feats if "pixel_values_videos" in f]
    assert has_video == ["v0", "v1", "v2"]
    assert feats[5]["video_grid_thw"].shape[0] == 2
    assert ("second_per_grid_ts" in feats[0]) == (family == "qwen2.5-vl")
    video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
    assert all(int((f["labels"] == video_pad).sum()) == 0 for f in feats)

    batch = SFTCollator(tok.pad_token_id)(feats)
    assert batch["image_grid_thw"].shape[0] == 1 + 1 + 3  # i0, v1, ts0
    assert batch["video_grid_thw"].shape[0] == 1 + 1 + 2
    batch.pop("sample_ids")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**batch)
        assert torch.isfinite(out.loss)
        # the video is seen: another clip in v0 changes its logits
        alone = SFTCollator(tok.pad_token_id)([feats[0]])
        alone.pop("sample_ids")
        other = dict(alone, pixel_values_videos=torch.flip(alone["pixel_values_videos"], dims=[0]))
        assert (model(**alone).logits - model(**other).logits).abs().max() > 1e-4


def test_bad_video_drops_its_sample_with_the_reason(tiny_model_dir, tmp_path):
    proc = _processor(tiny_model_dir("qwen2-vl"))
    bad = video_sample("bad", "What is it?", "Nothing.", [b"\x00\x00\x00\x18ftypmp42 this is not a video"])
    data = write_dataset(tmp_path / "d.parquet", [samples()[0], bad])
    ds = SFTDataset([data], proc, get_family("qwen2-vl"), progress=False)
    s = ds.summary()
    assert (s["read"], s["kept"], s["dropped"]) == (2, 1, 1)
    assert ds.dropped[0].id == "bad" and ds.dropped[0].reason == "bad_video"
    assert ds.dropped[0].detail.startswith("video 0: ") and ds.dropped[0].detail.split(": ")[1] in VideoError.REASONS


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_packed_row_with_videos_equals_each_sample_alone(tiny_model_dir, tmp_path, family):
    from transformers import AutoModelForImageTextToText

    from geovl.train.packing import enable_packing

    folder = tiny_model_dir(family)
    proc = _processor(folder)
    data = write_dataset(tmp_path / "d.parquet", samples())
    ds = SFTDataset([data], proc, get_family(family), progress=False, video_settings=VideoSettings(max_frames=4))
    feats = [ds[i] for i in range(len(ds))]
    coll = SFTCollator(proc.tokenizer.pad_token_id)
    row = coll([{"packed": feats}])
    row.pop("sample_ids")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    enable_packing(model)
    with torch.no_grad():
        packed = model(**row).logits[0]
        start = 0
        for f in feats:
            alone = coll([f])
            alone.pop("sample_ids")
            n = f["input_ids"].shape[0]
            diff = (packed[start : start + n] - model(**alone).logits[0]).abs().max().item()
            assert diff < 1e-4, (f["sample_id"], diff)
            start += n


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sft_then_eval_on_video_and_timeseries(tiny_model_dir, tmp_path, capsys, monkeypatch, family):
    monkeypatch.setenv("GEOVL_RANK_STATE", "1")  # rank0.json: the sample ids trained on
    data = write_dataset(tmp_path / "d.parquet", samples())
    out = tmp_path / "run"
    rc, err = train(
        capsys, tiny_model_dir(family), data, out, "max_steps=3", "lr=1e-3", "video_fps=3", "video_max_frames=4"
    )
    assert rc == 0, err
    final = out / "final"
    pre = json.loads((final / "geovl_preprocess.json").read_text())
    assert pre["video"]["fps"] == 3.0 and pre["video"]["max_frames"] == 4
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"]["kept"] == 6 and summary["samples"]["dropped"] == 0
    seen = json.loads((out / "rank0.json").read_text())["sample_ids"]
    assert sorted(seen) == sorted(r["id"] for r in samples())  # 3 steps × 2 = one epoch: every sample trained

    preds = tmp_path / "p.jsonl"
    rc, err = run_cli(capsys, "eval", "--model", final, "--data", data, "--out", preds, "--max-new-tokens", "3")
    assert rc == 0, err
    recs = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["v0", "i0", "v1", "ts0", "t0", "v2"]
    assert [r["reference"] for r in recs] == ANSWERS
    assert recs[3]["meta"]["dates"] == DATES
    assert not (tmp_path / "p.rejects.jsonl").exists()


def _requests():
    from geovl.inference.engine import ChatRequest

    def user(*parts, text):
        return [{"role": "user", "content": [{"type": p} for p in parts] + [text_part(text)]}]

    return [
        ChatRequest(user("video", text="What changes?"), [], [mp4(8, seed=11)]),
        ChatRequest(user("image", text="Is there water?"), [png(56, 84, 12)]),
        ChatRequest(user(text="Name a river.")),
        ChatRequest(user("image", "video", text="Compare."), [png(84, 56, 13)], [mp4(6, 64, 48, seed=14)]),
        ChatRequest(user("video", text="What changes?"), [], [mp4(8, seed=15)]),
        ChatRequest(
            user("image", "image", "image", text=timeseries_sample("x")["messages"][0]["content"][-1]["text"]),
            [png(56, 56, 20 + i) for i in range(3)],
        ),
    ]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_engine_mixed_batch_equals_one_by_one(tiny_model_dir, family):
    from geovl.inference.engine import GenerationParams, LocalEngine

    reqs = _requests()
    engine = LocalEngine(str(tiny_model_dir(family)), device="cpu", batch_size=6)
    params = GenerationParams(max_new_tokens=6)
    usage: list = []
    batched = engine.generate(reqs, params, usage=usage)
    alone = [engine.generate([r], params)[0] for r in reqs]
    assert batched == alone
    # exact prompt counts (video pads expanded) before generation = what the model saw
    assert [engine.count_prompt_tokens(r) for r in reqs] == [u["prompt_tokens"] for u in usage]
    # the sort key from the container headers (nothing decoded) agrees for these clips
    assert [engine.estimate_length(r) for r in reqs] == [u["prompt_tokens"] for u in usage]
    # the video matters: two different clips with the same question give different first-token logits
    with torch.no_grad():
        a, b = (engine.model(**engine.encode([r])).logits[0, -1] for r in (reqs[0], reqs[4]))
    assert (a - b).abs().max() > 1e-5


def test_engine_applies_the_folders_video_settings(tiny_model_dir, tmp_path):
    from geovl.inference.engine import LocalEngine
    from geovl.models.preprocess import PreprocessConfig

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2-vl"), folder)
    req = _requests()[0]  # 8 frames at 4 fps = 2 s
    default = LocalEngine(str(folder), device="cpu")
    assert default.video == VideoSettings()
    pre = PreprocessConfig.load(folder) or PreprocessConfig()
    pre.video = VideoSettings(fps=1.0, max_frames=2).to_dict()
    pre.save(folder)
    sparse = LocalEngine(str(folder), device="cpu")
    assert sparse.video == VideoSettings(fps=1.0, max_frames=2)
    n_default, n_sparse = default.count_prompt_tokens(req), sparse.count_prompt_tokens(req)
    grid = default.encode([req])["video_grid_thw"][0]
    grid_sparse = sparse.encode([req])["video_grid_thw"][0]
    assert int(grid_sparse[0]) == 1 and int(grid[0]) > 1  # 2 frames → one temporal patch
    assert n_sparse < n_default


def test_eval_rejects_only_the_bad_video(tiny_model_dir, tmp_path, capsys):
    bad = video_sample("bad", "What is it?", "Nothing.", [b"not a video at all, just bytes"])
    data = write_dataset(tmp_path / "d.jsonl", [samples()[0], bad, samples()[1]])
    preds = tmp_path / "p.jsonl"
    model = tiny_model_dir("qwen2-vl")
    rc, err = run_cli(capsys, "eval", "--model", model, "--data", data, "--out", preds, "--max-new-tokens", "2")
    assert rc == 0, err
    assert [json.loads(x)["id"] for x in preds.read_text().splitlines()] == ["v0", "i0"]
    rej = [json.loads(x) for x in (tmp_path / "p.rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rej] == ["bad"] and rej[0]["reason"] in VideoError.REASONS


def test_grpo_keeps_video_samples(tiny_model_dir, tmp_path):
    from geovl.train.grpo_data import GRPOPrompts

    proc = _processor(tiny_model_dir("qwen2-vl"))
    data = write_dataset(tmp_path / "d.parquet", samples())
    prompts = GRPOPrompts([data], proc, get_family("qwen2-vl"), progress=False)
    s = prompts.summary()
    assert s["read"] == 6 and s["kept"] == 6 and not prompts.dropped and s["video_prompts"] == 3


def test_infer_cli_asks_about_a_video_and_refuses_a_bad_one(tiny_model_dir, tmp_path, capsys):
    clip, img = tmp_path / "flight.mp4", tmp_path / "a.png"
    clip.write_bytes(mp4(6, seed=30))
    img.write_bytes(png(56, 56, 31))
    out = tmp_path / "o.jsonl"
    model = tiny_model_dir("qwen3-vl")
    args = ["infer", "--model", model, "--max-new-tokens", "3", "-q", "What appears?"]
    rc, err = run_cli(capsys, *args, "--image", img, "--video", clip, "--out", out)
    assert rc == 0, err
    rec = json.loads(out.read_text())
    assert rec["videos"] == [str(clip)] and rec["images"] == [str(img)] and isinstance(rec["prediction"], str)

    fake = tmp_path / "photo.mp4"
    fake.write_bytes(png(56, 56, 32))  # an image renamed .mp4
    rc, err = run_cli(capsys, *args, "--video", fake)
    assert rc != 0 and "photo.mp4" in err and "Traceback" not in err
    rc, err = run_cli(capsys, *args, "--video", tmp_path / "missing.mp4")
    assert rc != 0 and "missing.mp4" in err


def test_remote_engine_sends_videos_as_video_url(tmp_path):
    import base64

    from geovl.inference.engine import ChatRequest, EngineError
    from geovl.inference.remote import to_openai_messages

    data = mp4(4, seed=40)
    path = tmp_path / "c.mp4"
    path.write_bytes(data)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}, text_part("What changes?")]}]
    out = to_openai_messages(ChatRequest(msgs, [], [data, path]))
    parts = out[0]["content"]
    assert [p["type"] for p in parts] == ["video_url", "video_url", "text"]
    for p in parts[:2]:
        head, b64 = p["video_url"]["url"].split(",", 1)
        assert head == "data:video/mp4;base64" and base64.b64decode(b64) == data
    with pytest.raises(EngineError, match="not MP4"):
        to_openai_messages(ChatRequest(msgs, [], [png(8, 8), data]))


@pytest.mark.parametrize("bad, named", [("video_fps=0", "video_fps"), ("video_max_frames=1", "video_max_frames")])
def test_bad_video_recipe_keys_are_named(tiny_model_dir, tmp_path, capsys, bad, named):
    data = write_dataset(tmp_path / "d.parquet", samples()[:2])
    rc, err = train(capsys, tiny_model_dir("qwen2-vl"), data, tmp_path / "run", "max_steps=1", bad)
    assert rc != 0 and named in err and "Traceback" not in err
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_over_budget_video_is_thinned_in_pairs_or_dropped_whole(tiny_model_dir, tmp_path, family):
    """The one budget rule (geovl.data.video_budget): frames leave in pairs until the sample fits; a sample that
    does not fit even at two frames is dropped whole; the encoded sample has exactly the measured length."""
    proc = _processor(tiny_model_dir(family))
    fam = get_family(family)
    long = video_sample("long", "What happens?", "A building rises.", [mp4(16, seed=50)])
    settings = VideoSettings(fps=4.0, max_frames=16)
    full = SFTDataset(
        [write_dataset(tmp_path / "a.parquet", [long])], proc, fam, progress=False, video_settings=settings
    )
    n_full, vis_full = full.lengths[0], full.video_tokens[0]
    assert full.video_frames == {} and full.summary()["video_subsampled"] == 0 and vis_full > 0
    for budget, key in ((vis_full // 2, "max_visual_tokens"), (n_full - vis_full // 3, "max_length")):
        kw = {key: budget}
        ds = SFTDataset(
            [write_dataset(tmp_path / f"{key}.parquet", [long])],
            proc,
            fam,
            progress=False,
            video_settings=settings,
            **kw,
        )
        assert ds.summary()["kept"] == 1 and ds.summary()["video_subsampled"] == 1
        frames = ds.video_frames[0][0]
        assert frames % 2 == 0 and 2 <= frames < 16
        f = ds[0]
        assert f["input_ids"].shape[0] == ds.lengths[0] <= (budget if key == "max_length" else n_full)
        assert ds.video_tokens[0] <= (budget if key == "max_visual_tokens" else vis_full)
        assert int(f["video_grid_thw"][0][0]) == frames // 2  # the encoded clip has the kept frames
    tiny = SFTDataset(
        [write_dataset(tmp_path / "t.parquet", [long])], proc, fam, progress=False, video_settings=settings,
        max_visual_tokens=1,
    )  # fmt: skip
    assert tiny.summary()["kept"] == 0 and tiny.dropped[0].reason == "over_visual_token_budget"
    assert "even at 2 frames" in tiny.dropped[0].detail


def test_grpo_step_on_timeseries_and_video_samples(tiny_model_dir, tmp_path, capsys):
    """A GRPO step on time-series samples (images) and a video sample of the same file."""
    data = write_dataset(
        tmp_path / "g.parquet",
        [timeseries_sample("ts0", seed=60), samples()[0], timeseries_sample("ts1", seed=70)],
    )
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    out = tmp_path / "grpo"
    rc, err = run_cli(
        capsys,
        "train",
        "grpo",
        recipe,
        f"model={tiny_model_dir('qwen2.5-vl')}",
        f"train_data={data}",
        f"output_dir={out}",
        "progress_bar=false",
        "batch_size=2",
        "num_generations=2",
        "max_completion_length=4",
        "max_steps=1",
    )
    assert rc == 0, err[-2000:]
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text().splitlines()]
    assert dropped == []
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["prompts"]["kept"] == 3 and summary["prompts"]["video_prompts"] == 1
    assert (out / "final").is_dir()
