"""GRPO on grounding samples: TRL hands each reward the sample's boxes and box frame; the grounding
rewards run inside `trl.GRPOTrainer` and are logged."""

from __future__ import annotations

import json

from geovl.data.boxes import answer_text, box_dict
from geovl.data.schema import make_sample
from sft_util import FAST, png, run_cli, write_dataset

PLUGIN = """
import json, os

def frame_reward(completions, **kwargs):
    with open(os.environ["GEOVL_TEST_FRAMES"], "a") as f:
        for m in kwargs["meta"]:
            f.write(json.dumps({"frame": m.get("box_frame"), "boxes": m.get("boxes")}) + "\\n")
    return [min(1.0, len(c[0]["content"]) / 24) for c in completions]
"""


def test_grpo_passes_boxes_and_frames_to_the_rewards(tiny_model_dir, tmp_path, capsys, monkeypatch):
    boxes = [box_dict([4, 4, 30, 20], "building")]
    samples = [
        make_sample(
            f"g{i}",
            "Locate every building",
            answer_text(boxes),
            [png(56, 56 + 28 * (i % 2), i)],
            qtype="grounding",
            meta={"boxes": boxes},
        )
        for i in range(4)
    ]
    data = write_dataset(tmp_path / "g.parquet", samples)
    plugin = tmp_path / "frames.py"
    plugin.write_text(PLUGIN)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("reward_funcs: [grounding_reward, box_count_reward, box_format_reward]\nreport_to: []\n")
    frames = tmp_path / "frames.jsonl"
    monkeypatch.setenv("GEOVL_TEST_FRAMES", str(frames))
    out = tmp_path / "run"
    rc, err = run_cli(
        capsys,
        "train",
        "grpo",
        recipe,
        f"model={tiny_model_dir('qwen2.5-vl')}",
        f"train_data={data}",
        f"output_dir={out}",
        f"reward_file={plugin}",
        *FAST,
        "num_generations=2",
        "max_completion_length=4",
        "save_steps=100",
        "lr=1e-3",
        "max_steps=2",
    )
    assert rc == 0, err[-3000:]
    rows = [json.loads(x) for x in frames.read_text().splitlines()]
    assert rows and all(r["boxes"] == boxes for r in rows)
    sizes = {tuple(r["frame"]["stored"]) for r in rows}
    assert sizes <= {(56, 56), (56, 84)} and all(r["frame"]["style"] == "abs_json" for r in rows)
    logged = (out / "final" / "trainer_state.json") if (out / "final" / "trainer_state.json").exists() else None
    text = logged.read_text() if logged else err
    assert "grounding_reward" in text and "box_count_reward" in text
