"""GRPO on video samples (and mixed image/video batches) for the three tiny families.

- ``geovl train grpo`` runs two steps on a batch holding a video-only, an image-only, an image + video and a
  two-video prompt: the weights change; the prompts the completions were generated from hold exactly the
  registry's number of ``<|video_pad|>`` (and ``<|image_pad|>``) tokens per sample and are exactly as long as the
  pre-pass measured; the vision tower sees the video grids in the (gradient) loss forward;
- the prompt budget subsamples a video prompt in frame pairs or drops it whole, counted (read = kept + dropped),
  and the thinned rows are exactly as long as measured;
- ``share_prompts=true`` with video prompts is refused with an error naming what is missing.
Clips are made with :func:`geovl.imagery.video.encode_mp4` (tiny frames, few of them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample, text_part
from geovl.imagery.video import VideoSettings, encode_mp4
from geovl.models.registry import get_family, video_bounds_of
from sft_util import FAST, png, run_cli, write_dataset
from video_util import video_sample

PLUGIN = """
def length_reward(completions, **kwargs):
    return [min(1.0, len(c[0]["content"]) / 24) for c in completions]
"""


def mp4(n: int, h: int = 32, w: int = 48, seed: int = 0, fps: float = 4.0) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        f[h // 3 : h // 3 + 8, (i * 5) % (w - 8) : (i * 5) % (w - 8) + 8] = 250
        frames.append(f)
    return encode_mp4(frames, fps)


def samples() -> list[dict]:
    return [
        video_sample("v0", "What appears during the flight?", "A building.", [mp4(4, seed=1)]),
        make_sample("i0", "Is there water in the image?", "yes", [png(56, 56, 2)], qtype="yes_no", source="t#i0"),
        video_sample("iv", "视频中有什么变化？", "出现了一栋新建筑。", [mp4(4, 48, 32, seed=3)], [png(56, 84, 4)]),
        video_sample("v2", "How many clips?", "Two.", [mp4(4, seed=6), mp4(2, 32, 32, seed=7)]),
    ]


def _processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


class Recorder:
    """Wraps the trainer's ``_generate_and_score_completions``: each row's sample id, prompt ids and whether it
    carried video inputs; and a forward hook on the vision tower: the grids it saw with gradients enabled."""

    def __init__(self, monkeypatch):
        from geovl.train.grpo_trainer import GeoVLGRPOTrainer

        self.rows, self.eval_rows, self.loss_grids = [], [], []
        orig = GeoVLGRPOTrainer._generate_and_score_completions
        rec = self

        def wrapped(trainer, inputs):
            out = orig(trainer, inputs)
            ids, mask = out["prompt_ids"].cpu(), out["prompt_mask"].cpu().bool()
            vin = out.get("video_inputs") or [None] * len(inputs)
            for x, row, m, v in zip(inputs, ids, mask, vin):
                has_video = v is not None and "pixel_values_videos" in v  # the row's own video inputs
                frames = [len(c.frames) for c in x["videos"]]
                (rec.rows if trainer.model.training else rec.eval_rows).append(
                    (x["id"], row[m].tolist(), has_video, frames)
                )
            return out

        monkeypatch.setattr(GeoVLGRPOTrainer, "_generate_and_score_completions", wrapped)

    def __enter__(self):
        import re

        name = re.compile(r"Vision(?:Transformer)?(?:Pretrained)?Model$")

        def hook(module, args, kwargs, output):
            if name.search(type(module).__name__) and torch.is_grad_enabled():
                grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
                self.loss_grids.extend(tuple(g) for g in grid.tolist())

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# per family, another of TRL's forward paths: plain; with a reference model (KL, beta > 0); with the old-policy
# forward at generation and the generation batch shuffled and split over two steps (steps_per_generation=2)
EXTRA = {"qwen2-vl": [], "qwen2.5-vl": ["beta=0.04"], "qwen3-vl": ["steps_per_generation=2", "batch_size=4"]}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_grpo_trains_on_video_and_mixed_batches(family, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from geovl.train.grpo_data import GRPOPrompts

    model = tiny_model_dir(family)
    data = write_dataset(tmp_path / "g.parquet", samples())
    plugin = tmp_path / "len_rewards.py"
    plugin.write_text(PLUGIN)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    out = tmp_path / "run"
    with Recorder(monkeypatch) as rec:
        rc, err = run_cli(
            capsys,
            "train",
            "grpo",
            recipe,
            f"model={model}",
            f"train_data={data}",
            f"output_dir={out}",
            f"reward_file={plugin}",
            *FAST,
            "batch_size=8",  # 4 prompts × 2 completions: every batch mixes image, video and image + video rows
            "num_generations=2",
            "max_completion_length=4",
            "lr=1e-3",
            "save_steps=1",
            "max_steps=2",
            "video_fps=4",  # the 4-frame clips keep their 4 frames (two temporal pairs)
            "video_max_frames=4",
            *EXTRA[family],
            # Qwen2-VL also evaluates the rewards on the video prompts (TRL's prediction step) at step 2
            *([f"eval_data={data}", "eval_steps=2"] if family == "qwen2-vl" else []),
        )
    assert rc == 0, err[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["prompts"]["read"] == 4 and summary["prompts"]["kept"] == 4 and summary["prompts"]["dropped"] == 0
    assert summary["prompts"]["video_prompts"] == 3
    pre = json.loads((out / "final" / "geovl_preprocess.json").read_text())
    assert VideoSettings.from_dict(pre["video"]) == VideoSettings(fps=4.0, max_frames=4)
    if family == "qwen2-vl":
        logged = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
        assert any("eval_reward" in r for r in logged) and len(rec.eval_rows) == 8

    # the weights changed between the two steps (and away from LoRA's zero start)
    w1, w2 = _weights(out / "checkpoint-1"), _weights(out / "final")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert any(k.endswith("lora_B.weight") and w1[k].abs().sum() > 0 for k in w1)

    # the completions came from prompts holding every video's tokens, exactly as the pre-pass measured
    proc = _processor(model)
    fam = get_family(family)
    tok = proc.tokenizer
    vpad, ipad = tok.convert_tokens_to_ids("<|video_pad|>"), tok.convert_tokens_to_ids("<|image_pad|>")
    prompts = GRPOPrompts([data], proc, fam, progress=False, video_settings=VideoSettings(fps=4.0, max_frames=4))
    length = dict(zip(prompts.ids, prompts.lengths))
    bounds = video_bounds_of(proc)
    shapes = {"v0": [(32, 48)], "i0": [], "iv": [(48, 32)], "v2": [(32, 48), (32, 32)]}
    img_tokens = {"i0": fam.image_tokens(56, 56), "iv": fam.image_tokens(84, 56)}
    assert len(rec.rows) == (8 if family == "qwen3-vl" else 16) and {r[0] for r in rec.rows} == set(shapes)
    assert sorted({(r[0], tuple(r[3])) for r in rec.rows}) == [("i0", ()), ("iv", (4,)), ("v0", (4,)), ("v2", (4, 2))]
    for sid, ids, has_video, frames in rec.rows + rec.eval_rows:
        want = sum(fam.video_tokens(n, h, w, **bounds) for n, (h, w) in zip(frames, shapes[sid]))
        assert ids.count(vpad) == want, sid
        assert (want > 0) == has_video == bool(shapes[sid]), sid
        assert ids.count(ipad) == img_tokens.get(sid, 0), sid
        assert len(ids) == length[sid], sid
    # the gradient (loss) forwards saw every image and every video of the rows generated: each round of the
    # 4 prompts holds 2 images and 4 videos (3 of them of 4 frames: two temporal patches)
    rounds = len(rec.rows) // 4
    assert len(rec.loss_grids) == rounds * (2 + 4)
    assert sum(1 for g in rec.loss_grids if g[0] == 2) == rounds * 3


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_token_types_are_the_processors(family, tiny_model_dir):
    """The loss forwards rebuild ``mm_token_type_ids`` from the ids: equal to what the processor makes."""
    import io

    from PIL import Image

    from geovl.imagery.video import read_frames
    from geovl.models.vision_input import video_processor_kwargs
    from geovl.train.grpo_trainer import mm_token_types

    proc = _processor(tiny_model_dir(family))
    clip = read_frames(mp4(4, seed=21), VideoSettings(fps=4.0, max_frames=4))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, text_part("What changed?")]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    img = Image.open(io.BytesIO(png(56, 84, 22))).convert("RGB")
    enc = proc(text=[text], images=[img], return_tensors="pt", **video_processor_kwargs([clip]))
    tok = proc.tokenizer
    ours = mm_token_types(
        enc["input_ids"][0], tok.convert_tokens_to_ids("<|image_pad|>"), tok.convert_tokens_to_ids("<|video_pad|>")
    )
    assert torch.equal(ours, torch.as_tensor(enc["mm_token_type_ids"][0]))
    assert int((ours == 1).sum()) > 0 and int((ours == 2).sum()) > 0


def test_budget_subsamples_or_drops_whole_and_counts_conserve(tiny_model_dir, tmp_path):
    from geovl.models.vision_input import video_processor_kwargs
    from geovl.train.grpo_data import GRPOPrompts

    family = "qwen2.5-vl"
    proc = _processor(tiny_model_dir(family))
    fam = get_family(family)
    bounds = video_bounds_of(proc)
    per4 = fam.video_tokens(4, 32, 48, **bounds)
    rows = [
        video_sample("long", "What appears?", "A road.", [mp4(8, seed=11)]),  # 8 frames: over budget, thinned
        video_sample("two", "How many?", "Two.", [mp4(8, 96, 96, seed=12), mp4(8, 96, 96, seed=13)]),  # over at 2+2
        make_sample("img", "Water?", "yes", [png(56, 56, 14)], qtype="yes_no", source="t#img"),
        video_sample("bad", "What?", "Nothing.", [b"not a video"]),
    ]
    data = write_dataset(tmp_path / "b.parquet", rows)
    budget = per4 + 1  # one 4-frame video fits; 8 frames do not; two videos of 2 frames each do not either
    assert fam.video_tokens(8, 32, 48, **bounds) > budget
    assert 2 * fam.video_tokens(2, 96, 96, **bounds) > budget
    settings = VideoSettings(fps=8.0, max_frames=8)
    p = GRPOPrompts([data], proc, fam, max_visual_tokens=budget, progress=False, video_settings=settings)
    s = p.summary()
    assert s["read"] == 4 == s["kept"] + s["dropped"]
    assert p.ids == ["long", "img"] and s["video_subsampled"] == 1 and s["video_prompts"] == 1
    assert s["dropped_by_reason"] == {"over_visual_token_budget": 1, "bad_video": 1}
    # the thinned row: as many frames as the fit kept, and exactly as long as measured
    row = p.row(0)
    n = [len(c.frames) for c in row["videos"]]
    assert n == p.video_frames[0] and n[0] < 8
    enc = proc(
        text=[proc.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)],
        **video_processor_kwargs(row["videos"]),
        return_tensors="pt",
    )
    assert enc["input_ids"].shape[1] == p.lengths[0]
    assert int((enc["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum()) <= budget

    # the prompt-length budget: the same rule, under its own reason
    q = GRPOPrompts([data], proc, fam, max_prompt_length=10, progress=False, video_settings=settings)
    qs = q.summary()
    assert qs["read"] == qs["kept"] + qs["dropped"] == 4 and qs["kept"] == 0
    assert qs["dropped_by_reason"] == {"over_max_prompt_length": 3, "bad_video": 1}


def test_share_prompts_refuses_video_prompts(tiny_model_dir, tmp_path, capsys):
    data = write_dataset(tmp_path / "g.parquet", samples()[:2])
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("reward_funcs: [rs_reward]\nreport_to: []\n")
    rc, err = run_cli(
        capsys,
        "train",
        "grpo",
        recipe,
        f"model={tiny_model_dir('qwen2-vl')}",
        f"train_data={data}",
        f"output_dir={tmp_path / 'run'}",
        *FAST,
        "num_generations=2",
        "max_steps=1",
        "share_prompts=true",
    )
    assert rc != 0
    assert "share_prompts" in err and "pixel_values_videos" in err and "1 prompt(s) have videos" in err
    assert not (tmp_path / "run" / "final").exists()
