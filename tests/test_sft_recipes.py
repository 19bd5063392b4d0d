"""Every shipped recipe runs as documented on a tiny model:
``geovl train sft recipes/X.yaml model=DIR train_data=FILE output_dir=OUT max_steps=6``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geovl.train.recipe import load_recipe
from sft_util import progress, qa_samples, run_cli, sft_recipes, write_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sft_recipes()  # every recipes/*.yaml but the GRPO ones


def _family_for(model: str) -> str:
    m = model.lower()
    return "qwen3-vl" if "qwen3" in m else "qwen2-vl" if "qwen2-vl" in m else "qwen2.5-vl"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("recipes") / "d.parquet", qa_samples(8))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_trains_six_steps(path, tiny_model_dir, data, tmp_path, capsys):
    shipped = load_recipe(path)
    model = tiny_model_dir(_family_for(shipped.model))
    out = tmp_path / "out"
    argv = [f"model={model}", f"train_data={data}", f"output_dir={out}", "max_steps=6"]
    rc, err = run_cli(capsys, "train", "sft", path, *argv)
    assert rc == 0, err[-3000:]
    final = out / "final"
    lora = shipped.tune_llm == "lora" or shipped.tune_vision == "lora"
    weights = final / ("adapter_model.safetensors" if lora else "model.safetensors")
    assert (
        weights.is_file()
        and (final / "geovl_preprocess.json").is_file()
        and (final / "processor_config.json").is_file()
    )
    # the resolved recipe (file + overrides) is saved in the run folder and in final/
    resolved = load_recipe(path, argv)
    assert load_recipe(out / "recipe.yaml") == resolved == load_recipe(final / "recipe.yaml")
    assert yaml.safe_load((out / "recipe.yaml").read_text())["max_steps"] == 6
    assert progress(out)[-1]["step"] == 6
    if "tensorboard" in shipped.report_to:
        assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "trainable parameters per part" in err
